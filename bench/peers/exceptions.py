"""Why a peer has no row: one root, so the benchmark goes on past any of them."""


class PeerError(Exception):
    """A peer could not be measured; the message says why."""


class PeerInstallError(PeerError):
    """A peer's virtual environment could not be built."""


class PeerRunError(PeerError):
    """The runner failed, timed out, or answered something that is not an answer."""
