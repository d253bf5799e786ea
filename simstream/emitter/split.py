"""Splitting one emitter's ranks (and an aggregate bandwidth cap) over several processes.

Pure: profiles in, profiles out. The ranks ``rank_offset..rank_offset+ranks-1``
are cut into ``processes`` consecutive groups whose sizes differ by at most
one (the first groups get the extra ranks), as an MPI job places ranks. Rank
ids stay global, so everything seeded by the rank id (payload content, jitter,
fault draws) and the URL choice ``urls[rank % len(urls)]`` are the same as in
one process.

An aggregate cap (``network.bandwidth_scope: aggregate``) is one token bucket
shared by the ranks of a process; processes cannot share one, so each process
enforces an even share, ``cap / processes``, of the base cap and of every
phase's cap. A per-rank cap applies to each rank unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simstream.profile import Profile, parse_profile

__all__ = ["Share", "process_profile", "split_cap", "split_ranks"]


@dataclass(frozen=True)
class Share:
    """One process's part of the ranks: ids ``rank_offset..rank_offset+ranks-1``."""

    index: int
    rank_offset: int
    ranks: int

    @property
    def rank_ids(self) -> range:
        return range(self.rank_offset, self.rank_offset + self.ranks)

    @property
    def label(self) -> str:
        last = self.rank_offset + self.ranks - 1
        return f"rank {last}" if self.ranks == 1 else f"ranks {self.rank_offset}..{last}"


def split_ranks(ranks: int, processes: int, rank_offset: int = 0) -> list[Share]:
    """``ranks`` rank ids from ``rank_offset`` in ``processes`` consecutive groups.

    Sizes differ by at most one; every id is in exactly one group. Raises
    ValueError unless ``1 <= processes <= ranks`` and ``rank_offset >= 0``.
    """
    if processes < 1 or ranks < processes or rank_offset < 0:
        raise ValueError(f"cannot split {ranks} ranks from {rank_offset} over "
                         f"{processes} processes")
    base, extra = divmod(ranks, processes)
    out = []
    start = rank_offset
    for i in range(processes):
        n = base + (1 if i < extra else 0)
        out.append(Share(i, start, n))
        start += n
    return out


def split_cap(mbps: float | None, processes: int) -> float | None:
    """One process's share of an aggregate cap (Mbit/s); None (uncapped) stays None."""
    return None if mbps is None else mbps / processes


def process_profile(profile: Profile, share: Share, processes: int) -> Profile:
    """The profile one emitter process runs: its ranks, one process, its cap share.

    Faults naming a rank outside the share are left out (they would not apply
    there). Raises ProfileError if the result is invalid (it cannot be for a
    share from :func:`split_ranks` of a valid profile).
    """
    data: dict[str, Any] = profile.model_dump(mode="python")
    tp = data["transport"]
    tp["ranks"] = share.ranks
    tp["rank_offset"] = share.rank_offset
    tp["processes"] = 1
    data["faults"] = [f for f in data["faults"]
                      if f["rank"] is None or f["rank"] in share.rank_ids]
    if profile.network.bandwidth_scope == "aggregate":
        net = data["network"]
        net["bandwidth_mbps"] = split_cap(net["bandwidth_mbps"], processes)
        for ph in data["timeline"]["phases"]:
            if ph.get("network") is not None:
                ph["network"]["bandwidth_mbps"] = split_cap(ph["network"]["bandwidth_mbps"],
                                                            processes)
    return parse_profile(data, source=f"(emitter process {share.index}, {share.label})")
