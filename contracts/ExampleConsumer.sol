// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IInferenceConsumer} from "./IInferenceConsumer.sol";
import {InferenceCoordinator} from "./InferenceCoordinator.sol";

/// @notice A minimal consumer: asks a question through the coordinator and keeps the answers.
contract ExampleConsumer is IInferenceConsumer {
    InferenceCoordinator public immutable coordinator;

    struct Answer {
        string output;
        string model;
        bool received;
    }

    mapping(uint256 => Answer) public answers;
    uint256 public lastRequestId;

    event AnswerReceived(uint256 indexed requestId, string output, string model);

    error OnlyCoordinator();

    constructor(InferenceCoordinator coordinator_) {
        coordinator = coordinator_;
    }

    /// @notice Sends a request whose answer is delivered to this contract; msg.value is the fee.
    function ask(
        string calldata prompt,
        string[] calldata acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        InferenceCoordinator.SecurityFrame calldata frame,
        uint32 callbackGasLimit
    ) external payable returns (uint256 requestId) {
        requestId = coordinator.requestInference{value: msg.value}(
            prompt, acceptedModels, temperature, maxTokens, frame, address(this), callbackGasLimit
        );
        lastRequestId = requestId;
    }

    function onInferenceResult(uint256 requestId, string calldata output, string calldata model) external {
        if (msg.sender != address(coordinator)) revert OnlyCoordinator();
        answers[requestId] = Answer(output, model, true);
        emit AnswerReceived(requestId, output, model);
    }

    /// @notice Refunds of failed requests come back here.
    receive() external payable {}
}
