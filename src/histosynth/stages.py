"""Glue between Snakemake rules and the package: one small function per rule.

Every rule runs `workflow/scripts/stage.py`, which calls `run(snakemake)`. The
function for the rule unpacks the rule's input/output/params and makes one call
into the module that does the work, so all logic stays testable outside Snakemake.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback


from .errors import InputError


def _threads(n: int) -> None:
    """Import torch and cap its CPU threads. Imported here, not at the top: the table,
    selection and data stages never use it, and its import is seconds per job."""
    import torch

    torch.set_num_threads(n)


def _gpu_unless_cpu(setting: str) -> str:
    """Sampling and scoring stages: CUDA when present, unless the config pins the CPU."""
    import torch

    return "cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu"


def download(smk):
    from .download import download_dataset

    p = smk.params
    out_dir = os.path.dirname(smk.output[0])  # resources/<dataset>/
    download_dataset(p.name, out_dir, base_url=p.base_url, checksums=dict(p.checksums))


def prepare(smk):
    from .prepare import prepare_dataset

    p = smk.params
    raw_dir = os.path.dirname(smk.input[0])  # resources/<dataset>/ (unused by `folder`)
    out_dir = os.path.dirname(smk.output.stores[0])
    prepare_dataset(p.name, raw_dir, out_dir, classes=p.classes, image_size=p.image_size,
                    options=dict(p.options))


def split(smk):
    from .split import write_subsets

    write_subsets(smk.input.train, list(smk.output.subsets), smk.output.counts,
                  fraction=smk.params.fraction, seed=smk.params.seed)


def train_classifier(smk):
    from .classifier import ClassifierConfig, train_classifier as train

    _threads(smk.threads)
    synthetic = smk.input.get("synthetic")
    tags = {"generator": smk.wildcards.generator, "filter": smk.wildcards.filter} if synthetic else None
    train(smk.input.train, smk.input.subset, smk.input.valid, smk.input.test,
          metrics_path=smk.output.metrics, history_path=smk.output.history, model_path=smk.output.model,
          # Not a declared output: Snakemake deletes those before a rerun, this must survive.
          resume_path=os.path.join(os.path.dirname(smk.output.metrics), "resume.pt"),
          strategy=smk.params.strategy, seed=smk.params.seed, cfg=ClassifierConfig(**smk.params.cfg),
          synthetic_store=synthetic, tags=tags)


train_classifier_synthetic = train_classifier  # the same stage, fed a filtered synthetic set


def evaluate_unified(smk):
    from .unified import evaluate_unified as evaluate

    _threads(smk.threads)
    p = smk.params
    evaluate(smk.input.scores, os.path.join(os.path.dirname(smk.input.scores), "checkpoints"), smk.input.valid,
             smk.input.test, smk.output.metrics, smk.output.curve, generator=smk.wildcards.generator,
             subset=str(smk.input.subset), seed=p.seed, metric=p.metric, alpha=p.alpha, criterion=p.criterion,
             batch_size=p.batch_size, device=_gpu_unless_cpu(p.device))


def feature_extractor(smk):
    """The domain classifier that scores generators, and the real subset's feature statistics."""
    from .classifier import ClassifierConfig, train_classifier as train
    from .features import domain_extractor, extract_features, save_stats
    from .split import read_subset
    from .store import read_store

    _threads(smk.threads)
    cfg = ClassifierConfig(**smk.params.cfg)
    result = train(smk.input.train, smk.input.subset, smk.input.valid, smk.input.test,
                   metrics_path=smk.output.metrics, history_path=smk.output.history, model_path=smk.output.model,
                   resume_path=os.path.join(os.path.dirname(smk.output.metrics), "resume.pt"),
                   strategy="traditional", seed=0, cfg=cfg)
    images, _, _ = read_store(smk.input.train, read_subset(smk.input.subset))
    extractor = domain_extractor(smk.output.model, cfg.backbone, len(result["class_names"]))
    save_stats(smk.output.stats, extract_features(extractor, images, cfg.eval_batch_size, result["device"]))


def train_generator(smk):
    """In this process; a job given several GPUs (`generator.<name>.gpus`) runs one torchrun process per GPU."""
    vae = smk.input.get("vae")
    args = {"train": str(smk.input.train), "subset": str(smk.input.subset), "vae": str(vae) if vae else None,
            "losses": str(smk.output.losses),
            "ckpt_dir": os.path.join(os.path.dirname(smk.output.losses), "checkpoints"),
            "cfg": dict(smk.params.cfg), "threads": smk.threads}
    gpus = int(smk.resources.get("gpu", 0) or 0)
    if gpus > 1:
        _torchrun_train_generator(args, gpus)
    else:
        train_generator_job(args)


def train_generator_job(args: dict) -> None:
    """train_generator from plain arguments: in the stage's process, or as one torchrun rank
    (histosynth.train_generator_ddp; gan_training joins the process group itself)."""
    from .gan_training import GANTrainConfig, train_gan
    from .split import read_subset
    from .store import read_store

    _threads(args["threads"])
    images, labels, class_names = read_store(args["train"], read_subset(args["subset"]))
    cfg = dict(args["cfg"])
    cfg["betas"] = tuple(cfg["betas"])
    train_gan(images, labels, len(class_names), args["ckpt_dir"], args["losses"], GANTrainConfig(**cfg),
              vae_path=args["vae"])


def _torchrun_train_generator(args: dict, nproc: int) -> None:
    """`torchrun --standalone --nproc_per_node=N -m histosynth.train_generator_ddp ARGS.json`, its output
    streamed to the log; a failure ends the stage with torchrun's exit status."""
    import subprocess
    from pathlib import Path

    from .fileio import write_json

    threads = max(1, args["threads"] // nproc)  # the job's CPU threads, shared by its ranks
    args_path = os.path.join(os.path.dirname(args["losses"]), "train_generator_ddp.json")
    write_json(args_path, {**args, "threads": threads})
    # `python -m torch.distributed.run` is torchrun, from this very interpreter and environment.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "histosynth.train_generator_ddp", args_path]
    src = str(Path(__file__).resolve().parents[1])  # the ranks run this same code, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": str(threads)}
    print(f"[train_generator] {nproc} GPUs: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        for line in proc.stdout:  # bytes, split at \n only: progress bars' \r stay as in-process
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # the stage was interrupted: take the ranks down with it
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if rc != 0:
        print(f"histosynth train_generator: error: torchrun exited with status {rc}", file=sys.stderr, flush=True)
        raise SystemExit(rc if rc > 0 else 128 - rc)  # killed by signal N: 128 + N, as a shell reports it


def train_vae(smk):
    from .split import read_subset
    from .store import read_store
    from .vae_training import VAETrainConfig, train_vae as train

    _threads(smk.threads)
    images, _, _ = read_store(smk.input.train, read_subset(smk.input.subset))
    valid, _, _ = read_store(smk.input.valid)
    train(images, valid, VAETrainConfig(**smk.params.cfg), model_path=smk.output.model,
          losses_path=smk.output.losses, metrics_path=smk.output.metrics,
          # Not a declared output: Snakemake deletes those before a rerun, this must survive.
          resume_path=os.path.join(os.path.dirname(smk.output.model), "resume.pt"))


def inception_stats(smk):
    """pytorch-fid Inception statistics of the real subset, for standard FID."""
    from .batches import pick_device
    from .features import extract_features, inception_extractor, save_stats
    from .split import read_subset
    from .store import read_store

    _threads(smk.threads)
    images, _, _ = read_store(smk.input.train, read_subset(smk.input.subset))
    device = pick_device(smk.params.device)
    save_stats(smk.output.stats, extract_features(inception_extractor(smk.input.weights), images,
                                                  smk.params.batch_size, device))


def score_checkpoints(smk):
    from .features import domain_extractor, inception_extractor, load_stats
    from .generate import score_checkpoints as score
    from .reference import scoring_counts
    from .split import read_subset
    from .store import read_store

    _threads(smk.threads)
    p = smk.params
    _, labels, class_names = read_store(smk.input.train, read_subset(smk.input.subset))
    n_classes = len(class_names)
    device = _gpu_unless_cpu(p.device)
    references = {"domain": (domain_extractor(smk.input.extractor, p.backbone, n_classes), load_stats(smk.input.stats))}
    if "inception_stats" in smk.input.keys():
        references["inception"] = (inception_extractor(smk.input.inception_weights),
                                   load_stats(smk.input.inception_stats))
    score(os.path.join(os.path.dirname(smk.input.losses), "checkpoints"), references,
          scoring_counts(labels, n_classes, p.images_per_class), smk.output.scores,
          batch_size=p.batch_size, device=device, seed=p.seed, sampling=p.sampling)


def select_checkpoint(smk):
    from .selection import write_selection

    write_selection(smk.input.scores, smk.output.curve, smk.output.choice, metric=smk.params.metric,
                    alpha=smk.params.alpha)


def _reference_draws(smk, valid_labels):
    """The validation images each reference design compares with the subset (histosynth.reference)."""
    from .reference import draw_per_class, scoring_counts, target_counts
    from .split import read_subset
    from .store import read_store

    p = smk.params
    _, labels, class_names = read_store(smk.input.train, read_subset(smk.input.subset))
    counts = {"scoring": scoring_counts(labels, len(class_names), p.images_per_class),
              "kept": target_counts(labels, len(class_names), p.ratio)}
    return counts, {d: draw_per_class(valid_labels, c, p.quality["seed"]) for d, c in counts.items()}


def reference_quality(smk):
    """Real validation vs real training subset, drawn like checkpoint scoring and like the filters' kept sets."""
    from .features import domain_extractor, extract_features, inception_extractor, load_stats
    from .reference import write_reference
    from .store import read_labels, read_store, store_info

    _threads(smk.threads)
    p = smk.params
    counts, draws = _reference_draws(smk, read_labels(smk.input.valid))
    class_names = store_info(smk.input.valid).class_names
    device = _gpu_unless_cpu(p.device)
    extractors = {"domain": domain_extractor(smk.input.extractor, p.backbone, len(class_names))}
    real = {"domain": load_stats(smk.input.stats)["features"]}
    if "inception_stats" in smk.input.keys():
        extractors["inception"] = inception_extractor(smk.input.inception_weights)
        real["inception"] = load_stats(smk.input.inception_stats)["features"]
    images = {d: read_store(smk.input.valid, idx)[0] for d, idx in draws.items()}  # the draws only, not all of it
    features = {d: {space: extract_features(ext, images[d], p.batch_size, device) for space, ext in extractors.items()}
                for d in draws}
    write_reference(smk.output.reference, real, features, counts, subset=int(smk.wildcards.subset), quality=p.quality)


def vae_quality(smk):
    """The VAE's reconstructions of the reference's kept-sized validation draw: what bounds latent diffusion."""
    import json

    import torch

    from .features import domain_extractor, extract_features, load_stats
    from .reference import write_vae_quality
    from .store import read_labels, read_store
    from .vae_training import load_vae, reconstruct_images

    _threads(smk.threads)
    p = smk.params
    _, draws = _reference_draws(smk, read_labels(smk.input.valid))
    valid, _, class_names = read_store(smk.input.valid, draws["kept"])
    device = torch.device(_gpu_unless_cpu(p.device))
    vae, _ = load_vae(smk.input.vae, device)
    recon = reconstruct_images(vae, valid, p.batch_size)
    extractor = domain_extractor(smk.input.extractor, p.backbone, len(class_names))
    with open(smk.input.vae_metrics) as f:
        psnr = json.load(f)["valid_psnr"]
    write_vae_quality(smk.output.metrics, load_stats(smk.input.stats)["features"],
                      extract_features(extractor, recon, p.batch_size, device), subset=int(smk.wildcards.subset),
                      quality=p.quality, psnr=psnr)


def convergence(smk):
    """Is the selected snapshot near real-vs-real? Its pool's first r·N_i per class scored like the reference;
    and the checkpoint curve drawn against the reference."""
    import json

    import pandas as pd

    from .features import domain_extractor, extract_features, load_stats
    from .reference import first_per_class, target_counts, write_convergence
    from .selection import plot_curve
    from .split import read_subset
    from .store import read_store

    _threads(smk.threads)
    p, w = smk.params, smk.wildcards
    _, labels, class_names = read_store(smk.input.train, read_subset(smk.input.subset))
    with open(smk.input.reference) as f:
        reference = json.load(f)
    with open(smk.input.choice) as f:
        epoch = json.load(f)["epoch"]
    pool, pool_labels, _ = read_store(smk.input.pool)
    draw = first_per_class(pool_labels, target_counts(labels, len(class_names), p.ratio))
    extractor = domain_extractor(smk.input.extractor, p.backbone, len(class_names))
    result = write_convergence(smk.output.metrics, load_stats(smk.input.stats)["features"],
                               extract_features(extractor, pool[draw], p.batch_size, _gpu_unless_cpu(p.device)),
                               reference, generator=w.generator, subset=int(w.subset), epoch=epoch, quality=p.quality,
                               max_fid_ratio=p.converged["max_fid_ratio"], min_recall=p.converged["min_recall"])
    state = "converged" if result["converged"] else "NOT CONVERGED"
    title = (f"{w.generator}, subset {w.subset}: {state} (pool FID {result['fid_ratio']:.1f}x real vs real, "
             f"recall {100 * result['recall']:.0f} %)")
    plot_curve(pd.read_csv(smk.input.curve, sep="\t"), p.metric, p.alpha, epoch, smk.output.plot, title,
               reference=reference["scoring"])


def generate(smk):
    import json

    from .checkpoint import checkpoint_path
    from .reference import target_counts
    from .generate import generate_pool
    from .split import read_subset
    from .store import read_store

    _threads(smk.threads)
    p = smk.params
    with open(smk.input.choice) as f:
        epoch = json.load(f)["epoch"]
    real_images, labels, class_names = read_store(smk.input.train, read_subset(smk.input.subset))
    # HistoGAN: a pool of 4 r N_i per class, N_i = real images of class i in the subset; a whole
    # multiple of the filters' target round(r N_i), so HistoGAN's two halvings land on it exactly.
    counts = {c: int(round(p.pool_factor * n)) for c, n in target_counts(labels, len(class_names), p.ratio).items()}
    device = _gpu_unless_cpu(p.device)
    snapshot = checkpoint_path(os.path.join(os.path.dirname(smk.input.choice), "checkpoints"), epoch)
    generate_pool(snapshot, counts, class_names, smk.output.pool, grid_png=smk.output.grid,
                  real=(real_images, labels), batch_size=p.batch_size, device=device, seed=p.seed,
                  sampling=p.sampling)


def filter(smk):  # noqa: A001 (the rule is called `filter`)
    import json

    from .checkpoint import checkpoint_path
    from .features import load_stats
    from .filtering import FilterConfig, filter_pool
    from .split import read_subset
    from .store import read_store

    _threads(smk.threads)
    p = smk.params
    real_images, real_labels, _ = read_store(smk.input.train, read_subset(smk.input.subset))
    with open(smk.input.choice) as f:
        epoch = json.load(f)["epoch"]
    device = _gpu_unless_cpu(p.device)
    filter_pool(FilterConfig(**p.cfg), smk.input.pool, real_images, real_labels,
                load_stats(smk.input.stats)["features"], smk.input.extractor, p.backbone,
                checkpoint_path(os.path.join(os.path.dirname(smk.input.choice), "checkpoints"), epoch),
                smk.output.selected, smk.output.summary, device=device, sampling=p.sampling)


def quality(smk):
    """Quality of the kept images against the real subset, and the real/kept/rejected feature map."""
    import numpy as np

    from .features import domain_extractor, extract_features, inception_extractor, load_stats
    from .quality import plot_feature_map, write_quality
    from .store import read_extra, read_store, store_info

    _threads(smk.threads)
    p, w = smk.params, smk.wildcards
    n_classes = len(store_info(smk.input.train).class_names)
    device = _gpu_unless_cpu(p.device)
    selected, _, _ = read_store(smk.input.selected)
    pool, _, _ = read_store(smk.input.pool)
    keep = read_extra(smk.input.selected, "pool_index")
    rejected = np.setdiff1d(np.arange(len(pool)), keep)  # images drawn beyond the pool were never rejected
    extractor = domain_extractor(smk.input.extractor, p.backbone, n_classes)
    real = load_stats(smk.input.stats)["features"]
    fake = extract_features(extractor, selected, p.batch_size, device)
    spaces = {"domain": (real, fake)}
    if "inception_stats" in smk.input.keys():
        inception = inception_extractor(smk.input.inception_weights)
        spaces["inception"] = (load_stats(smk.input.inception_stats)["features"],
                               extract_features(inception, selected, p.batch_size, device))
    q = p.quality
    write_quality(smk.output.metrics, spaces, generator=w.generator, filter=w.filter, subset=int(w.subset),
                  k=q["k"], kid_subsets=q["kid_subsets"], seed=q["seed"])
    rejected_features = extract_features(extractor, pool[rejected], p.batch_size, device) if len(rejected) else None
    plot_feature_map(real, fake, rejected_features,
                     smk.output.plot, f"{w.generator}, subset {w.subset}, filter {w.filter}",
                     seed=q["seed"], max_points=p.max_points)


def quality_table(smk):
    from .quality import aggregate_quality

    i, p = smk.input, smk.params
    aggregate_quality(list(i.metrics), smk.output.tsv, smk.output.md, smk.output.tex, smk.output.html,
                      generators=p.generators, filters=p.filters, reference_paths=list(i.references),
                      convergence_paths=list(i.convergence), vae_paths=list(i.vae),
                      latent_generators=p.latent_generators)


def aggregate(smk):
    from .aggregate import aggregate_classification

    p = smk.params
    aggregate_classification(list(smk.input.metrics), smk.output.tsv, smk.output.md, smk.output.tex,
                             smk.output.html, smk.output.runs, backbone=p.backbone, strategies=p.strategies,
                             generators=p.generators, filters=p.filters, convergence_paths=list(smk.input.convergence))


def plot_auc_by_strategy(smk):
    from .aggregate import plot_auc_by_strategy as plot

    p = smk.params
    plot(smk.input.runs, smk.output.plot, generators=p.generators, filters=p.filters, strategies=p.strategies,
         convergence_paths=list(smk.input.convergence))


def plot_synthetic_only_auc(smk):
    from .aggregate import plot_synthetic_only_auc as plot

    plot(smk.input.runs, smk.output.plot, generators=smk.params.generators, filters=smk.params.filters,
         convergence_paths=list(smk.input.convergence))


class _Tee:
    """Write to the terminal and the rule's log file at once."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, data):
        for s in self.streams:
            s.write(data)
        return len(data)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def _gpu_slot(smk):
    """A job declaring `resources: gpu=N` gets N GPUs no other job holds (gpu_slots.py).

    With no CUDA device it runs on CPU only if the config's `allow_cpu` says so
    (read here, not passed as a param, so changing it never reruns a job).
    """
    n = int(smk.resources.get("gpu", 0) or 0)
    if n <= 0:
        yield
        return
    from .gpu_slots import gpu_slots

    with gpu_slots(n) as ids:
        if ids:
            print(f"GPU slot: CUDA_VISIBLE_DEVICES={','.join(ids)}", flush=True)
        elif smk.config.get("allow_cpu", False):
            print("GPU slot: no CUDA device found; running on CPU (allow_cpu: true)", flush=True)
        else:
            raise InputError(f"this job wants a GPU (resources gpu={n}) but no CUDA device was found; "
                             "set `allow_cpu: true` in your config to run it on CPU (very slow at "
                             "paper scale), or run on a machine with a GPU")
        yield


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _storage_error(e: OSError) -> bool:
    # HDF5 reports a full disk as a plain OSError whose message carries the errno text.
    return e.errno in _STORAGE_ERRNOS or "No space left on device" in str(e)


def _fail_with_traceback():
    traceback.print_exc()
    sys.stderr.flush()
    raise SystemExit(1)


def run(smk) -> None:
    """Run the function named like the rule; log to the rule's log; clean errors."""
    stage = globals()[smk.rule]
    log_path = smk.log[0] if len(smk.log) else os.devnull
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "w") as log, \
            contextlib.redirect_stdout(_Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        try:
            with _gpu_slot(smk):
                stage(smk)
        except InputError as e:
            # A user mistake: one clear line, no traceback noise.
            print(f"histosynth {smk.rule}: error: {e}", file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1)
        except OSError as e:
            if not _storage_error(e):
                _fail_with_traceback()
            # Full disk, quota, read-only or unwritable output directory: the machine's state, not a bug.
            print(f"histosynth {smk.rule}: error: cannot write {e.filename or 'an output'}: {e.strerror or e}. "
                  "Nothing half-written was kept (outputs are renamed into place only when complete) and "
                  "finished stages are untouched: free space or fix the directory, then run snakemake again.",
                  file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1)
        except Exception:
            _fail_with_traceback()
