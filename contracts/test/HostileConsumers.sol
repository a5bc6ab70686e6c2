// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IInferenceConsumer} from "../IInferenceConsumer.sol";
import {InferenceCoordinator} from "../InferenceCoordinator.sol";

/// @notice Test-only consumers that misbehave in the callback; finalize must survive all of them.
contract RevertingConsumer is IInferenceConsumer {
    function onInferenceResult(uint256, string calldata, string calldata) external pure {
        revert("consumer refuses");
    }
}

contract GasHungryConsumer is IInferenceConsumer {
    uint256 public burned;

    function onInferenceResult(uint256, string calldata, string calldata) external {
        while (true) {
            burned += 1;
        }
    }
}

contract ReentrantConsumer is IInferenceConsumer {
    InferenceCoordinator public immutable coordinator;
    bool public reentryFailed;
    bytes public reentryError;

    constructor(InferenceCoordinator coordinator_) {
        coordinator = coordinator_;
    }

    function onInferenceResult(uint256 requestId, string calldata output, string calldata) external {
        bytes[] memory noBits = new bytes[](0);
        bytes32[] memory noHashes = new bytes32[](0);
        try coordinator.finalize(requestId, noBits, noHashes, output) {
            reentryFailed = false;
        } catch (bytes memory reason) {
            reentryFailed = true;
            reentryError = reason;
        }
        // a second attempt through withdraw must not pay anything either
        try coordinator.withdraw() {} catch {}
    }
}

/// @notice An oracle whose receive() reverts: its reward must be deferred, not lost or blocking.
contract RejectingPayee {
    InferenceCoordinator public immutable coordinator;

    constructor(InferenceCoordinator coordinator_) {
        coordinator = coordinator_;
    }

    function register() external payable {
        coordinator.register{value: msg.value}();
    }

    function commit(uint256 requestId, bytes32 requestHash, bytes32 commitment) external {
        coordinator.commit(requestId, requestHash, commitment);
    }

    function reveal(uint256 requestId, string calldata output, uint8 modelIndex, bytes calldata bits, bytes32 salt)
        external
    {
        coordinator.reveal(requestId, output, modelIndex, bits, salt);
    }

    function withdrawTo(address payable to) external {
        coordinator.withdrawTo(to);
    }

    receive() external payable {
        revert("no payments");
    }
}
