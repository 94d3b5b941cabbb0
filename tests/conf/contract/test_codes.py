"""The shared codes: the numbers on the discrete tags and the {hkl} code of the facet slots."""

from __future__ import annotations

import itertools
import math

import pytest

from conf.contract.codes import (
    N_FACET_SLOTS,
    AgentMode,
    BatchCommand,
    BatchState,
    ControlSource,
    decode_hkl,
    encode_hkl,
)
from conf.contract.signals import (
    IMAGE_SIZE_FRACTIONS,
    N_IMAGE_SIZE_BINS,
    facet_slot_signals,
    image_size_fraction_signal,
)


def test_the_codes_are_the_integers_the_tags_carry():
    assert [int(s) for s in BatchState] == [0, 1, 2, 3, 4]
    assert (BatchCommand.START, BatchCommand.COMPLETE) == (1, 6)
    assert [int(m) for m in AgentMode] == [0, 1, 2] and AgentMode(2) is AgentMode.AUTOMATIC
    assert (ControlSource.LOCAL, ControlSource.REMOTE) == (0, 1)


def test_hkl_codes_round_trip():
    for hkl in itertools.product(range(10), repeat=3):
        if hkl == (0, 0, 0):
            continue
        assert decode_hkl(float(encode_hkl(hkl))) == hkl
    assert encode_hkl((1, 1, 0)) == 110


@pytest.mark.parametrize("code", [0, -1, 1000, 100.5, math.nan, math.inf])
def test_what_is_not_a_family_decodes_to_none(code):
    assert decode_hkl(code) is None


def test_indices_that_do_not_fit_a_digit_are_refused():
    with pytest.raises(ValueError, match="0..9"):
        encode_hkl((10, 0, 0))


def test_facet_slots_are_named_from_one():
    assert facet_slot_signals(N_FACET_SLOTS) == ("facet_4_hkl", "facet_4_area_fraction")
    with pytest.raises(ValueError):
        facet_slot_signals(0)


def test_image_size_bins_are_named_from_one():
    assert image_size_fraction_signal(1) == "image_size_bin1_number_fraction"
    assert IMAGE_SIZE_FRACTIONS == tuple(image_size_fraction_signal(j) for j in range(1, N_IMAGE_SIZE_BINS + 1))
    with pytest.raises(ValueError):
        image_size_fraction_signal(0)
