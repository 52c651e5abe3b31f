"""`medqwen train` as one process of a torchrun job, recording what this process writes.

Run by test_distributed.py as ``torchrun --standalone --nproc_per_node 2 ddp_worker.py AUDIT_DIR WATCHED... -- ARGS``:
prints this process's rank and world size as the trainer's Accelerator sees them, runs
``medqwen.cli.main(ARGS)`` and writes ``AUDIT_DIR/rank<R>.json``: every file or folder this process
created, opened for writing, renamed or deleted under the WATCHED folders (the run's output folder
and the SVD cache), seen through Python audit hooks (open, os.mkdir, os.rename/replace, os.remove,
os.rmdir, shutil.rmtree).
"""
from __future__ import annotations

import json
import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install_audit(watched: list[str]) -> tuple[list[list[str]], list[bool]]:
    roots = [os.path.realpath(w) + os.sep for w in watched]
    events: list[list[str]] = []
    active = [True]

    def inside(path) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return None
        full = os.path.realpath(os.fspath(path))
        return full if any((full + os.sep).startswith(root) for root in roots) else None

    def hook(event: str, args: tuple) -> None:
        if not active[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and (full := inside(path)):
                events.append([event, full])
        elif event == "os.mkdir":
            if (full := inside(args[0])) and not os.path.exists(full):
                events.append([event, full])
        elif event in ("os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            if full := inside(args[0]):
                events.append([event, full])

    sys.addaudithook(hook)
    events.append(["active", ""])  # events[0]: the hook is installed (audit hooks cannot be removed)
    return events, active


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    audit_dir, watched, cli_args = argv[0], argv[1:split], argv[split + 1 :]
    events, active = _install_audit(watched)
    from medqwen.cli import main as cli_main
    from medqwen.training.trainer import make_accelerator

    acc = make_accelerator()
    rank, world = acc.process_index, acc.num_processes
    print(f"rank {rank} of {world} ({acc.distributed_type}, backend {acc.state.backend})", flush=True)
    try:
        cli_main(cli_args)
    finally:
        active[0] = False
        with open(os.path.join(audit_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"rank": rank, "world_size": world, "distributed_type": getattr(acc.distributed_type, "value", str(acc.distributed_type)),
                       "events": events[1:]}, handle)


if __name__ == "__main__":
    main()
