"""What the server queued for a peer (a client or worker connection), decoded."""

from __future__ import annotations

from corral import protocol as p
from corral.server.subscriptions import Peer


def sent_frames(peer: Peer, accepted: p.Frames = p.TO_CLIENT) -> list[p.Frame]:
    """The frames in the peer's outbox now, taken out of it, in order."""
    frames = []
    while not peer.outbox.empty():
        data = peer.outbox.get_nowait()
        assert data is not None, "the peer was closed"
        frames.extend(p.decode_all(data, accepted))
    return frames
