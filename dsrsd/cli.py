"""Command line: ``python -m dsrsd train|sweep|replay ...``.

Every user error is a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING

from dsrsd.errors import DsrsdError

if TYPE_CHECKING:
    from dsrsd.config import TrainConfig


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ``error: ...`` (exit 2) like every other error."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _kv(items: list[str] | None, flag: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; values parsed as JSON when possible.

    Types and ranges are checked later, once, by :mod:`dsrsd.validate` (through TrainConfig).
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise DsrsdError(f"{flag} expects KEY=VALUE, got {item[:60]!r}")
        key, value = item.split("=", 1)
        if not key:
            raise DsrsdError(f"{flag} expects KEY=VALUE, got an empty key in {item[:60]!r}")
        if key in out:
            raise DsrsdError(f"{flag} sets {key[:60]!r} twice")
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            out[key] = value
    return out


# TrainConfig fields set through KEY=VALUE lists, and the flags' own names where they differ
_DICT_FLAGS = {"data_params": ("--data", "KEY=VALUE", "dataset parameter"),
               "method_params": ("--param", "KEY=VALUE", "method parameter"),
               "weights": ("--weight", "TERM=W", "loss weight (others keep their default)")}
_ALIASES = {"d": ("--hidden", "--d")}


def config_flags() -> dict[str, tuple[str, ...]]:
    """TrainConfig field -> its ``train`` flags: every field of the config can be set."""
    from dataclasses import fields

    from dsrsd.config import TrainConfig
    return {f.name: _DICT_FLAGS[f.name][:1] if f.name in _DICT_FLAGS
            else _ALIASES.get(f.name, (f"--{f.name.replace('_', '-')}",))
            for f in fields(TrainConfig)}


def _train_parser(sub) -> None:
    """``train``'s options, one per :class:`~dsrsd.config.TrainConfig` field (derived from the
    dataclass, so a new field is a new option); unset options keep the config's defaults."""
    from dataclasses import MISSING, fields

    from dsrsd.config import TrainConfig
    p = sub.add_parser("train", help="train one method on one dataset and write DIR/metrics.json")
    hints = typing.get_type_hints(TrainConfig)
    flags = config_flags()
    for f in fields(TrainConfig):
        if f.name in _DICT_FLAGS:
            flag, metavar, text = _DICT_FLAGS[f.name]
            p.add_argument(flag, dest=f.name, action="append", metavar=metavar, help=text)
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        meta = dict(f.metadata)
        text = f"default {default}" + (f"; one of {', '.join(meta['choices'])}"
                                       if "choices" in meta else "")
        hint = hints[f.name]
        if hint is bool:
            p.add_argument(*flags[f.name], dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=text)
        else:
            p.add_argument(*flags[f.name], dest=f.name, type=hint, default=None, help=text,
                           metavar={int: "N", float: "X"}.get(hint, "NAME"))
    p.add_argument("--like", metavar="EXPERIMENT:VARIANT",
                   help="start from the configuration an experiment gives a variant (its first "
                        "run; e.g. oulad_full:dsrsd, the searched DSRSD-Net); the options above "
                        "change it, --data/--param/--weight key by key. On oulad and assist2009 "
                        "the default is the validation search's variant of --method "
                        "(oulad_full / assist_full); 'none' starts from the dataclass defaults")
    p.add_argument("--out", required=True, help="output directory (metrics.json, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/last.pt if present")
    p.add_argument("--no-progress", action="store_true")


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The run config of parsed ``train`` options. Unset options keep the starting point: the
    experiment variant's configuration with ``--like``; on ``oulad`` and ``assist2009`` without
    it, the variant of ``--method`` that the dataset's validation search ran
    (:data:`dsrsd.sweep.SEARCHED`); otherwise (or ``--like none``) the dataclass defaults. The
    dataset parameters of ``--like`` are dropped when ``--dataset`` names another dataset."""
    from dataclasses import fields

    from dsrsd.config import DEFAULT_WEIGHTS, TrainConfig
    start: dict = {"weights": dict(DEFAULT_WEIGHTS)}
    spec = getattr(a, "like", None)
    if spec is None:
        from dsrsd.sweep import searched_like
        spec = searched_like(getattr(a, "dataset", None), getattr(a, "method", None))
    if spec and spec != "none":
        from dsrsd.sweep import like
        start = like(spec)
        if a.dataset is not None and a.dataset != start["dataset"]:
            start["data_params"] = {}
    given = {f.name: getattr(a, f.name) for f in fields(TrainConfig)
             if f.name not in _DICT_FLAGS and getattr(a, f.name, None) is not None}
    merged = {key: {**start.get(key, {}), **_kv(getattr(a, key), flag)}
              for key, (flag, _, _) in _DICT_FLAGS.items()}
    return TrainConfig(**{**start, **given, **merged})


def _train(a: argparse.Namespace) -> int:
    from dsrsd.train import fit

    cfg = train_config(a)
    if not a.out:
        raise DsrsdError("--out must not be empty")
    if a.like is None:
        from dsrsd.sweep import searched_like
        spec = searched_like(a.dataset, a.method)
        if spec:
            print(f"starting from {spec}, the configuration the validation search chose "
                  f"(--like none: the package defaults)")
    dist_on = _maybe_init_distributed(cfg.device)
    try:
        rec = fit(cfg, out=a.out, resume=a.resume, progress=not a.no_progress)
    finally:
        if dist_on:
            import torch.distributed as dist
            dist.destroy_process_group()
    t = rec["test"]
    print(f"{cfg.method} on {cfg.dataset}: test auc={t['auc']:.4f} acc={t['acc']:.4f} "
          f"epochs={rec['epochs_run']} wall={rec['wall_time_s']:.1f}s -> {a.out}/metrics.json")
    return 0


def _maybe_init_distributed(device: str) -> bool:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def build_parser() -> tuple[OneLineParser, object]:
    """The ``python -m dsrsd`` parser, and the sweep module (``None`` if it cannot load)."""
    parser = OneLineParser(prog="python -m dsrsd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    from dsrsd import replay
    replay.add_parser(sub)
    try:
        from dsrsd import sweep as sweep_mod
        sweep_mod.add_parser(sub)
    except ImportError:
        sweep_mod = None
    return parser, sweep_mod


def main(argv: list[str] | None = None) -> int:
    parser, sweep_mod = build_parser()
    a = parser.parse_args(argv)
    with _sigterm_as_interrupt():
        return _dispatch(parser, a, sweep_mod)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so writes are abandoned cleanly and workers are stopped."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _dispatch(parser: argparse.ArgumentParser, a: argparse.Namespace, sweep_mod) -> int:
    try:
        if a.command == "train":
            return _train(a)
        if a.command == "sweep" and sweep_mod is not None:
            return sweep_mod.run(a)
        if a.command == "replay":
            from dsrsd import replay
            return replay.run(a)
        parser.error(f"unknown command {a.command}")
    except DsrsdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("error: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full or read-only disk, a vanished folder: the system's one line
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (try a smaller --batch-size, --hidden or dataset)",
              file=sys.stderr)
        return 2
    return 0


def prepare_cache(prepare: Callable[[], object]) -> int:
    """Run a data script's ``prepare`` call with the CLI's one-line error promise; the exit code."""
    try:
        prepare()
    except DsrsdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk, --data-dir naming a file, ...
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (the cache is written whole or not at all)", file=sys.stderr)
        return 130
    return 0


def os_error(e: OSError) -> str:
    """``No space left on device: 'path'``: the reason and the file, on one line."""
    what = e.strerror or (errno.errorcode.get(e.errno or 0) if e.errno else None) or str(e)
    where = e.filename if e.filename is not None else None
    text = f"{what}: {str(os.fspath(where))!r}" if where is not None else what
    return text.splitlines()[0] if text else type(e).__name__
