"""Revert data as an endpoint hands it over: decoded when it is what a contract sends,
refused (``UndecodableRevert``) when no contract could have sent it."""

from __future__ import annotations

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_signature_to_4byte_selector

from oracle.chain.artifacts import UndecodableRevert, decode_revert

ERROR_STRING = "08c379a0"
PANIC = "4e487b71"
STAKE_TOO_LOW = function_signature_to_4byte_selector("StakeTooLow(uint256,uint256)").hex()


def test_the_contracts_own_reverts_decode() -> None:
    assert decode_revert("0x" + ERROR_STRING + abi_encode(["string"], ["no"]).hex()) == "no"
    assert decode_revert(bytes.fromhex(PANIC) + abi_encode(["uint256"], [0x11])) == "Panic(0x11)"
    low = abi_encode(["uint256", "uint256"], [1, 2]).hex()
    assert decode_revert("0x" + STAKE_TOO_LOW + low) == "StakeTooLow(stake=1, required=2)"
    assert decode_revert("0x") == "reverted without a reason"
    assert decode_revert("0xdeadbeef").startswith("unknown error 0xdeadbeef")


@pytest.mark.parametrize(
    "data",
    [
        "0x" + ERROR_STRING + "ff",  # a body cut short
        "0x" + PANIC,  # no code at all
        "0x" + STAKE_TOO_LOW + "03",  # one of the coordinator's errors, its arguments cut
        "0xzz",  # not hex
        # a string whose length runs past the data
        "0x" + ERROR_STRING + abi_encode(["uint256", "uint256"], [32, 1000]).hex(),
        # bytes that are not UTF-8
        "0x" + ERROR_STRING + abi_encode(["bytes"], [b"\xff\xfe"]).hex(),
    ],
)
def test_data_no_contract_could_send_is_refused_by_name(data: str) -> None:
    with pytest.raises(UndecodableRevert, match="revert data that"):
        decode_revert(data)
