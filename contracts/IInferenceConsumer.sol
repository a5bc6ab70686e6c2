// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice Implemented by a contract that wants the agreed answer delivered to it.
/// @dev Called by the coordinator inside try/catch with the gas the requester asked for;
///      a revert here never blocks finalisation, the answer stays readable in the event log.
interface IInferenceConsumer {
    function onInferenceResult(uint256 requestId, string calldata output, string calldata model) external;
}
