"""Fixtures shared by the network tests."""

import pytest


class RecordingLikelihood:
    """A likelihood that draws as `inner` does and keeps the parameters of every conditional it was given: what an
    autoregressive sampler used, to compare with the full forward of the finished sample."""

    def __init__(self, inner):
        self.inner, self.params = inner, []

    def sample(self, params, generator=None):
        self.params.append(params.clone())
        return self.inner.sample(params, generator=generator)


@pytest.fixture
def recording():
    """`recording(inner)`: a RecordingLikelihood around `inner`."""
    return RecordingLikelihood
