"""Temporal positives: each sampled frame's partner view is a frame of the same camera about Δt away.

With `buffer.temporal_positives`, `ReplayBuffer.sample` pairs each anchor frame with a frame of the
same camera about `buffer.temporal_delta_s` before or after it (the side drawn at random), so
BYOL's two views come from two moments of one scene rather than one frame twice. Pure numpy on the
buffer's slot bookkeeping (`trainer.eviction.Slots`), called under the buffer's lock.
"""

from __future__ import annotations

import numpy as np

from trainer.eviction import Slots


def temporal_partners(
    s: Slots, slots: np.ndarray, anchors: np.ndarray, signs: np.ndarray, delta_s: float
) -> np.ndarray:
    """Slot of each anchor's partner: `anchors` (slot ids) among the valid `slots`, `signs` +1 (look ahead
    first) or -1 (behind) per anchor, `delta_s` the time apart in seconds (frame timestamps); an anchor
    whose camera has no other frame stored is its own partner."""
    partners = anchors.copy()
    cams = s.camera_id[anchors]
    for cam in np.unique(cams):
        members = slots[s.camera_id[slots] == cam]
        order = np.argsort(s.timestamp[members], kind="stable")
        members, times = members[order], s.timestamp[members][order]
        rows = np.flatnonzero(cams == cam)
        anchor_times = s.timestamp[anchors[rows]]
        # each direction's nearest frame; the drawn one unless the other lands nearer its target time: past either
        # end of the camera's stored stretch, or in a pause in the recording (a LeRobot episode's end, the next
        # being EPISODE_GAP_S later; a log recorded in two goes), look the other way in time
        ahead = anchor_times + signs[rows] * delta_s
        back = anchor_times - signs[rows] * delta_s
        near_ahead, near_back = _nearest(times, ahead), _nearest(times, back)
        miss_ahead = np.where(members[near_ahead] == anchors[rows], np.inf, np.abs(times[near_ahead] - ahead))
        miss_back = np.where(members[near_back] == anchors[rows], np.inf, np.abs(times[near_back] - back))
        nearest = np.where(miss_back < miss_ahead, near_back, near_ahead)
        chosen = members[nearest]
        same = chosen == anchors[rows]
        # still the anchor itself: its camera's stretch is shorter than delta; take the adjacent frame of the
        # same camera nearer in time, when there is one
        if same.any() and len(members) > 1:
            pos = nearest[same]
            after, before = np.minimum(pos + 1, len(members) - 1), np.maximum(pos - 1, 0)
            nearer_after = times[after] - times[pos] <= times[pos] - times[before]
            use_after = (after != pos) & ((before == pos) | nearer_after)
            chosen[same] = members[np.where(use_after, after, before)]
        partners[rows] = chosen
    return partners


def _nearest(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index into sorted `times` of the entry nearest to each of `targets` (ties to the earlier)."""
    right = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    return np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)
