// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IInferenceConsumer} from "./IInferenceConsumer.sol";
import {InferenceCoordinator} from "./InferenceCoordinator.sol";

/// @notice A minimal consumer, safe to copy: its owner asks questions through the coordinator,
///         the answers are kept by request id, and refunds can be withdrawn.
/// @dev The coordinator delivers each request's answer once, so an answer is never overwritten.
///      Anyone may name this contract as the callback of their own request: those answers are
///      kept too (under their own ids) but `asked[id]` is false for them; trust only your ids.
///      Refunds (a failed request's fee and callback prepayment, and the share of the fee the
///      cluster did not earn) come back to this contract; the owner withdraws them.
contract ExampleConsumer is IInferenceConsumer {
    InferenceCoordinator public immutable coordinator;
    address public immutable owner;

    struct Answer {
        string output;
        string model;
        bool received;
    }

    mapping(uint256 => Answer) public answers;
    /// @notice True for the requests this contract sent itself.
    mapping(uint256 => bool) public asked;
    uint256 public lastRequestId;

    event AnswerReceived(uint256 indexed requestId, string output, string model);

    error OnlyCoordinator();
    error OnlyOwner();
    error WithdrawFailed();

    constructor(InferenceCoordinator coordinator_) {
        coordinator = coordinator_;
        owner = msg.sender;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert OnlyOwner();
        _;
    }

    /// @notice Sends a request whose answer is delivered to this contract.
    /// @dev msg.value = the fee for the nodes + callbackGasLimit * callbackGasPrice (paid to the finalizer)
    function ask(
        string calldata prompt,
        string[] calldata acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        InferenceCoordinator.SecurityFrame calldata frame,
        uint32 callbackGasLimit,
        uint64 callbackGasPrice
    ) external payable onlyOwner returns (uint256 requestId) {
        requestId = coordinator.requestInference{value: msg.value}(
            prompt, acceptedModels, temperature, maxTokens, frame, address(this), callbackGasLimit, callbackGasPrice
        );
        asked[requestId] = true;
        lastRequestId = requestId;
    }

    function onInferenceResult(uint256 requestId, string calldata output, string calldata model) external {
        if (msg.sender != address(coordinator)) revert OnlyCoordinator();
        answers[requestId] = Answer(output, model, true);
        emit AnswerReceived(requestId, output, model);
    }

    /// @notice Sends refunds held here to `to`; first collects any the coordinator had to defer.
    function withdraw(address payable to) external onlyOwner {
        if (coordinator.withdrawable(address(this)) > 0) coordinator.withdraw();
        (bool sent,) = to.call{value: address(this).balance}("");
        if (!sent) revert WithdrawFailed();
    }

    /// @notice Refunds of failed requests come back here (with the coordinator's bounded gas).
    receive() external payable {}
}
