"""Domain errors. No HTTP here: the gateway maps these to status codes in one place.

    LoraloopError
    ├── NotFound
    │   ├── ModelNotFound          the `model` field names nothing servable
    │   └── AdapterNotFound        an adapter version or alias the operator named is unknown
    ├── InvalidRequest             a request body that is not what the API accepts
    │   └── RequestTooLarge        a body over the configured size limit
    ├── InvalidAdapter             an artifact is not a loadable PEFT LoRA adapter
    ├── InvalidTransition          a lifecycle move the state machine does not allow
    ├── AuthError
    │   ├── Unauthenticated        missing, unknown or revoked API key
    │   └── Forbidden              a valid key without the scope for this route
    ├── RateLimited                a key over its requests per minute
    ├── LogQueueFull               the interaction log is full and set to refuse new work
    ├── NotStoredYet               a rated answer was served but is not on disk yet
    └── UpstreamError
        ├── NoHealthyUpstream      every vLLM replica is down or refused
        │   └── StoreUnavailable   the replica that stores a response is down
        ├── UpstreamTimeout        a replica took longer than the configured timeout
        └── AdapterLoadFailed      a replica refused to load an adapter version
"""

from __future__ import annotations


class LoraloopError(Exception):
    """Base of every error loraloop raises on purpose."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(LoraloopError):
    pass


class ModelNotFound(NotFound):
    pass


class AdapterNotFound(NotFound):
    pass


class InvalidRequest(LoraloopError):
    pass


class RequestTooLarge(InvalidRequest):
    pass


class InvalidAdapter(LoraloopError):
    pass


class InvalidTransition(LoraloopError):
    pass


class AuthError(LoraloopError):
    pass


class Unauthenticated(AuthError):
    pass


class Forbidden(AuthError):
    pass


class RateLimited(LoraloopError):
    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LogQueueFull(LoraloopError):
    pass


class NotStoredYet(LoraloopError):
    pass


class UpstreamError(LoraloopError):
    pass


class NoHealthyUpstream(UpstreamError):
    pass


class StoreUnavailable(NoHealthyUpstream):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class AdapterLoadFailed(UpstreamError):
    pass
