"""torchrun entry point: one rank of a multi-GPU train_generator job.

training.train_generator runs `torchrun --standalone --nproc_per_node=N -m
histosynth.generative.train_generator_ddp ARGS.json` (ARGS.json: its arguments, see
training.train_generator_rank); every rank runs the same job, and the loop joins
the process group from torchrun's environment (histosynth.generative.distributed). Ranks
other than 0 keep quiet on stdout; errors still reach stderr.
"""

import json
import os
import sys


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: torchrun ... -m histosynth.generative.train_generator_ddp ARGS.json")
    with open(argv[0]) as f:
        args = json.load(f)
    if os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")
    from histosynth.errors import InputError
    from histosynth.generative.training import train_generator_rank

    try:
        train_generator_rank(args)
    except InputError as e:  # a user mistake: one line, as the in-process stage reports it
        print(f"histosynth train_generator: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
