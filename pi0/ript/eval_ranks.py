"""One evaluation over several processes, one GPU each: `torchrun --nproc_per_node N -m pi0.ript.cli eval ...`.

Each process (rank) loads the policy onto its own GPU (`cuda:LOCAL_RANK`), has its env workers render on that GPU,
and takes the episodes still to run a block at a time as its workers free up (`EpisodeClaims`): a rank whose
episodes end early (successes) or whose card is faster takes more, so no rank sits idle while another still has a
queue. Blocks are runs of consecutive episodes, so a rank needs few scenes. All ranks append to the one
`episodes.jsonl` (`EpisodeLog`), which is what resume reads; rank 0 writes protocol.json, results.json and the chart.
The episodes are one process's: an episode depends on its (task, init state) and the protocol alone (pi0's noise
too, under eval.policy_noise=per_episode), not on which rank or worker ran it, up to float rounding between batch
sizes (tests/test_eval_ranks.py compares them frame for frame).

The ranks wait for each other through torch.distributed (gloo, even on GPUs: the messages are tiny CPU objects)
twice: once every rank has checked the output directory and read what is finished (before anyone writes), and at
the end, when rank 0 gathers the runner statistics before it summarises. A rank that fails ends the run: torchrun
stops the others.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

from pi0.ript.config.errors import ConfigError
from pi0.ript.env.libero_sim import render_on_gpu
from pi0.ript.policy.devices import resolve_device

T = TypeVar("T")

# A rank may finish its share hours before the slowest one; the collective's default 30-minute timeout would end
# such a run at the final barrier. A rank that dies ends the run through torchrun instead.
BARRIER_TIMEOUT = datetime.timedelta(days=7)

CLAIMS_FILE = ".episode_claims"  # in eval.output_dir, beside episodes.jsonl: how far the ranks have taken the episodes


@dataclass
class EvalRanks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> EvalRanks:
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; one process (rank 0 of 1) otherwise. Joins the process group."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        ranks = cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", rank=ranks.rank, world_size=world_size, timeout=BARRIER_TIMEOUT)
        return ranks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def policy_device(self, device: str) -> str:
        """`policy.device` for this rank: `auto`/`cuda` become this rank's GPU; `cpu` stays. One named GPU for
        every rank would put all the models on one card, so it is refused. Whichever GPU the policy gets, this
        process's env workers will render on it (`render_on_gpu`)."""
        if self.world_size == 1:
            resolved = resolve_device(device)
            if resolved.startswith("cuda"):
                import torch

                index = torch.device(resolved).index
                render_on_gpu(torch.cuda.current_device() if index is None else index)
            return resolved
        if device.startswith("cuda:"):
            raise ConfigError(
                f"policy.device={device!r} under torchrun with {self.world_size} processes: each process takes its own "
                "GPU (cuda:LOCAL_RANK); use policy.device=cuda (or auto), and CUDA_VISIBLE_DEVICES to choose the cards"
            )
        if device == "cpu":
            return device
        import torch

        if not torch.cuda.is_available():
            if device == "cuda":
                raise ConfigError("policy.device='cuda' but no CUDA device is visible: use policy.device=cpu or auto")
            return "cpu"
        count = torch.cuda.device_count()
        # A launcher that shows each process only its own card (CUDA_VISIBLE_DEVICES=LOCAL_RANK) leaves one: cuda:0.
        index = 0 if count == 1 else self.local_rank
        if index >= count:
            raise ConfigError(
                f"LOCAL_RANK={self.local_rank} but torch sees {count} GPUs: launch at most {count} processes per node "
                "(torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(index)  # CUDA graphs and compiled kernels are made on the current device
        render_on_gpu(index)  # this rank's env workers render on its card too
        return f"cuda:{index}"

    def wait_for_all(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (picklable objects)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class EpisodeLog:
    """`episodes.jsonl`, appended by any number of processes: each record is one `write` of one whole line under an
    exclusive `flock`, then fsync'd, so lines never interleave and a finished episode survives a crash. A line cut
    short by a crash (no newline at the end of the file) is closed first, so the next record starts a line of its
    own; the reader skips the broken one and that episode runs again. By hand because Python's logging and file
    objects give no cross-process guarantee for appends."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if size and os.pread(self._fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpisodeClaims:
    """Which of a run's remaining episodes the ranks have taken: the index of the next free one, in a file every rank
    reads and advances under an exclusive `flock`. Every rank holds the same list of remaining episodes (built from
    the protocol and episodes.jsonl before anyone writes); `take` hands the caller the next block of it.

    A block is at most `block` episodes (the rank's workers) and at most the rank's even share of what is left, so
    the last episodes spread over the ranks instead of queueing behind one. By hand: torch.distributed's collectives
    need every rank at once, and its key-value store (an atomic counter) is not public API; the output directory is
    shared by the ranks anyway, for episodes.jsonl."""

    def __init__(self, path: Path, total: int, world_size: int, block: int):
        self.path, self.total, self.world_size, self.block = path, total, world_size, max(block, 1)

    def reset(self) -> None:
        """Rank 0, before the ranks' first barrier: nothing is taken (a crashed run's file is overwritten)."""
        self.path.write_text("0\n")

    def take(self) -> range:
        """The indices of this rank's next block; empty once every episode is taken."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            start = int(os.pread(fd, 64, 0).decode() or 0)
            left = self.total - start
            size = min(self.block, -(-left // self.world_size)) if left > 0 else 0
            text = f"{start + size}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
            return range(start, start + size)
        finally:
            os.close(fd)  # also releases the lock

    def requests(self, items: Sequence[T]) -> Iterator[T]:
        """`items` block by block as this rank takes them: read lazily by the runner, as its workers free up."""
        while True:
            taken = self.take()
            if not taken:
                return
            yield from (items[i] for i in taken)


def merged_runner_stats(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """One `runner_stats` for results.json: a single rank's as it is; several ranks' counters summed, rates over the
    longest rank's wall time, and every rank's own under `per_rank`."""
    if len(per_rank) == 1:
        return per_rank[0]
    wall = max(s["wall_seconds"] for s in per_rank)
    calls = sum(s["inference_calls"] for s in per_rank)
    merged: dict[str, Any] = {
        key: sum(s[key] for s in per_rank)
        for key in ("env_steps", "episodes", "inference_calls", "worker_restarts", "task_loads")
    }
    merged.update(
        ranks=len(per_rank),
        mean_batch_size=sum(s["mean_batch_size"] * s["inference_calls"] for s in per_rank) / max(calls, 1),
        scene_models={key: sum(s["scene_models"][key] for s in per_rank) for key in per_rank[0]["scene_models"]},
        wall_seconds=wall,
        env_steps_per_second=merged["env_steps"] / wall if wall > 0 else 0.0,
        per_rank=per_rank,
    )
    return merged
