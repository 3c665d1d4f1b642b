"""The rehearsal modules' one bring-up each: the simulated first user's host up for the module, taken down at
its end (tests/support/rehearsal_fleet.py)."""
from __future__ import annotations

import pytest

from tests.support.rehearsal_fleet import bring_up, tear_down


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    yield bring_up(str(tmp_path_factory.mktemp("rehearsal-plan")))
    tear_down()
