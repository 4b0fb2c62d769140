"""Command line: ``python -m dsrsd train|sweep|bench ...``.

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

from dsrsd.errors import DsrsdError


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


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one method on one dataset and write DIR/metrics.json")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--method", default="dsrsd")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="output directory (metrics.json, checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/last.pt if present")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=64, help="hidden size d of every encoder")
    p.add_argument("--seq-encoder", default="gru", choices=None)
    p.add_argument("--modality-dropout", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help="dataset parameter")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter")
    p.add_argument("--weight", action="append", metavar="TERM=W", help="loss weight")
    p.add_argument("--no-progress", action="store_true")


def _train(a: argparse.Namespace) -> int:
    from dsrsd.config import DEFAULT_WEIGHTS, TrainConfig
    from dsrsd.train import fit

    cfg = TrainConfig(method=a.method, dataset=a.dataset, epochs=a.epochs, seed=a.seed,
                      device=a.device, batch_size=a.batch_size, lr=a.lr, d=a.hidden,
                      seq_encoder=a.seq_encoder, modality_dropout=a.modality_dropout, dropout=a.dropout,
                      patience=a.patience, data_params=_kv(a.data, "--data"),
                      method_params=_kv(a.param, "--param"),
                      weights={**DEFAULT_WEIGHTS, **_kv(a.weight, "--weight")})
    if not a.out:
        raise DsrsdError("--out must not be empty")
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


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m dsrsd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    try:
        from dsrsd import sweep as sweep_mod
        sweep_mod.add_parser(sub)
    except ImportError:
        sweep_mod = None
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
