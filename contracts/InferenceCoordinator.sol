// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ConsensusLib} from "./ConsensusLib.sol";
import {IInferenceConsumer} from "./IInferenceConsumer.sol";

/// @title InferenceCoordinator
/// @notice Carries an LLM inference request through commit, reveal, dispute and finalize.
///         Registered oracle nodes commit to an answer and its sign-bit embedding, reveal both,
///         dispute reveals whose embedding does not match their text, and the answer whose
///         embedding cluster reaches the requested share of the quorum is delivered.
/// @dev Only hashes of reveals are stored; `finalize` takes the embeddings as calldata.
contract InferenceCoordinator {
    // ------------------------------------------------------------------ types

    struct SecurityFrame {
        uint8 quorum;
        uint32 maxTimeMs;
        uint16 secDistance; // basis points of the embedding's bit count
        uint16 secPercentage; // basis points of the quorum
        string embeddingModel;
    }

    enum Status {
        None,
        Open,
        Finalized,
        Failed
    }

    enum FailureReason {
        NoCommits,
        NoReveals,
        NoConsensus
    }

    /// @dev packed so that commit and reveal touch one slot of it (slot 0), and a request
    ///      without a consumer writes no slot 2; timestamps in uint40 last until year 36812
    struct Request {
        // slot 0: the phase state and the consensus parameters
        uint40 commitDeadline;
        uint40 revealDeadline;
        uint40 lastRevealAt;
        uint8 quorum;
        uint8 seatCount;
        uint8 revealCount;
        Status status;
        uint16 dimBits;
        uint8 modelCount;
        uint16 secDistance;
        uint16 secPercentage;
        // slot 1
        address requester;
        uint96 fee;
        // slot 2
        address callback;
        uint32 callbackGasLimit;
        // slots 3..
        string[] acceptedModels;
    }

    struct Seat {
        address oracle;
        uint8 modelIndex;
        bool revealed;
        uint16 disputedBy; // bit j set when seat j disputed this reveal
    }


    struct Oracle {
        uint128 stake;
        bool registered;
    }

    // ------------------------------------------------------------------ errors

    error NotOwner();
    error Reentrancy();
    error StakeTooLow(uint256 stake, uint256 required);
    error NotRegistered(address oracle);
    error AlreadyRegistered(address oracle);
    error TransferFailed();
    error NothingToWithdraw();

    error EmptyPrompt();
    error PromptTooLong(uint256 length, uint256 maxLength);
    error EmptyModelList();
    error TooManyModels(uint256 count, uint256 maxCount);
    error EmptyModelName(uint256 index);
    error TemperatureOutOfRange(uint16 temperature);
    error ZeroMaxTokens();
    error InvalidQuorum(uint8 quorum, uint8 maxQuorum);
    error ZeroTime();
    error SecDistanceOutOfRange(uint16 secDistance);
    error SecPercentageOutOfRange(uint16 secPercentage);
    error UnknownEmbeddingModel(string embeddingModel);
    error CallbackGasTooHigh(uint32 callbackGasLimit, uint32 maxCallbackGas);
    error FeeTooLow(uint256 sent, uint256 required);
    error FeeTooHigh(uint256 sent, uint256 maxFee);

    error UnknownRequest(uint256 requestId);
    error RequestClosed(uint256 requestId);
    error EmptyCommitment();
    error CommitPhaseOver(uint256 requestId, uint40 commitDeadline);
    error SeatsFull(uint256 requestId);
    error AlreadyCommitted(uint256 requestId, address oracle);
    error NotCommitted(uint256 requestId, address oracle);
    error RevealNotOpen(uint256 requestId);
    error RevealPhaseOver(uint256 requestId, uint40 revealDeadline);
    error AlreadyRevealed(uint256 requestId, address oracle);
    error InvalidModelIndex(uint8 modelIndex, uint8 modelCount);
    error InvalidEmbeddingLength(uint256 length, uint256 expected);
    error CommitmentMismatch(uint256 requestId, address oracle);
    error NotARevealer(uint256 requestId, address oracle);
    error SelfDispute();
    error AlreadyDisputed(uint256 requestId, address accused, address disputer);
    error DisputeWindowClosed(uint256 requestId, uint40 closedAt);
    error FinalizeTooEarly(uint256 requestId, uint40 opensAfter);
    error SeatCountMismatch(uint256 given, uint256 seats);
    error RevealMismatch(uint256 seat);
    error WinnerOutputMismatch(uint256 requestId, uint256 winnerSeat);
    error InsufficientGasForCallback(uint256 available, uint256 required);

    // ------------------------------------------------------------------ events

    event OracleRegistered(address indexed oracle, uint256 stake);
    event OracleDeregistered(address indexed oracle, uint256 stakeReturned);
    event EmbeddingModelSet(string name, uint16 dimBits);

    event InferenceRequested(
        uint256 indexed requestId,
        address indexed requester,
        string prompt,
        string[] acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        SecurityFrame frame,
        address callback,
        uint32 callbackGasLimit,
        uint256 fee,
        uint64 commitDeadline,
        uint64 revealDeadline,
        uint32 disputeWindow
    );
    event Committed(uint256 indexed requestId, address indexed oracle, uint8 seat, bytes32 commitment);
    event Revealed(
        uint256 indexed requestId,
        address indexed oracle,
        uint8 seat,
        string output,
        uint8 modelIndex,
        bytes embeddingBits
    );
    event Disputed(uint256 indexed requestId, address indexed accused, address indexed disputer);
    event InferenceFinalized(
        uint256 indexed requestId,
        uint8 winnerSeat,
        string output,
        string model,
        uint256 clusterMask,
        uint256 rewardPerOracle,
        bool callbackSucceeded
    );
    event InferenceFailed(uint256 indexed requestId, FailureReason reason);
    event PaymentDeferred(address indexed payee, uint256 amount);

    // ------------------------------------------------------------------ configuration

    uint8 public constant MAX_QUORUM = 16;
    uint256 public constant MAX_MODELS = 8;
    uint16 public constant MAX_TEMPERATURE = 2000;
    uint32 public constant MAX_CALLBACK_GAS = 2_000_000;
    /// @dev gas kept back for finalize's own work after the consumer callback returns
    uint256 public constant CALLBACK_RESERVE = 40_000;
    uint256 private constant PAYMENT_GAS = 10_000;

    address public owner;
    uint256 public minStake;
    uint256 public minFeePerSeat;
    uint256 public maxPromptBytes = 8192;
    uint32 public revealWindow;
    uint32 public disputeWindow;
    uint256 public nextRequestId = 1;

    mapping(address => Oracle) public oracles;
    mapping(bytes32 => uint16) public embeddingDimBits;
    mapping(address => uint256) public withdrawable;

    mapping(uint256 => Request) private _requests;
    mapping(uint256 => Seat[16]) private _seats;
    /// @dev the commitment until the seat reveals, then keccak256(abi.encode(outputHash, keccak256(bits)))
    mapping(uint256 => bytes32[16]) private _seatHashes;

    bool private transient _entered;

    constructor(uint32 revealWindow_, uint32 disputeWindow_) {
        owner = msg.sender;
        revealWindow = revealWindow_;
        disputeWindow = disputeWindow_;
        _setEmbeddingModel("all-MiniLM-L6-v2", 384);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    modifier nonReentrant() {
        if (_entered) revert Reentrancy();
        _entered = true;
        _;
        _entered = false;
    }

    function setMinStake(uint256 value) external onlyOwner {
        minStake = value;
    }

    function setMinFeePerSeat(uint256 value) external onlyOwner {
        minFeePerSeat = value;
    }

    function setMaxPromptBytes(uint256 value) external onlyOwner {
        maxPromptBytes = value;
    }

    function setWindows(uint32 revealWindow_, uint32 disputeWindow_) external onlyOwner {
        revealWindow = revealWindow_;
        disputeWindow = disputeWindow_;
    }

    function setEmbeddingModel(string calldata name, uint16 dimBits) external onlyOwner {
        _setEmbeddingModel(name, dimBits);
    }

    function _setEmbeddingModel(string memory name, uint16 dimBits) private {
        embeddingDimBits[keccak256(bytes(name))] = dimBits;
        emit EmbeddingModelSet(name, dimBits);
    }

    // ------------------------------------------------------------------ oracles

    function register() external payable {
        Oracle storage oracle = oracles[msg.sender];
        if (oracle.registered) revert AlreadyRegistered(msg.sender);
        if (msg.value < minStake) revert StakeTooLow(msg.value, minStake);
        oracle.registered = true;
        oracle.stake = uint128(msg.value);
        emit OracleRegistered(msg.sender, msg.value);
    }

    function deregister() external nonReentrant {
        Oracle storage oracle = oracles[msg.sender];
        if (!oracle.registered) revert NotRegistered(msg.sender);
        uint256 stake = oracle.stake;
        delete oracles[msg.sender];
        emit OracleDeregistered(msg.sender, stake);
        _send(msg.sender, stake);
    }

    function withdraw() external nonReentrant {
        uint256 amount = withdrawable[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        withdrawable[msg.sender] = 0;
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ requests

    function requestInference(
        string calldata prompt,
        string[] calldata acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        SecurityFrame calldata frame,
        address callback,
        uint32 callbackGasLimit
    ) external payable returns (uint256 requestId) {
        uint16 dimBits = _validateRequest(prompt, acceptedModels, temperature, maxTokens, frame, callbackGasLimit);
        uint256 requiredFee = minFeePerSeat * frame.quorum;
        if (msg.value < requiredFee) revert FeeTooLow(msg.value, requiredFee);
        if (msg.value > type(uint96).max) revert FeeTooHigh(msg.value, type(uint96).max);

        requestId = nextRequestId++;
        uint40 commitDeadline = uint40(block.timestamp + (uint256(frame.maxTimeMs) + 999) / 1000);
        uint40 revealDeadline = commitDeadline + revealWindow;

        Request storage request = _requests[requestId];
        request.requester = msg.sender;
        request.commitDeadline = commitDeadline;
        request.quorum = frame.quorum;
        request.status = Status.Open;
        if (callback != address(0)) {
            request.callback = callback;
            request.callbackGasLimit = callbackGasLimit;
        }
        request.fee = uint96(msg.value);
        request.revealDeadline = revealDeadline;
        request.secDistance = frame.secDistance;
        request.secPercentage = frame.secPercentage;
        request.dimBits = dimBits;
        request.modelCount = uint8(acceptedModels.length);
        request.acceptedModels = acceptedModels;

        emit InferenceRequested(
            requestId,
            msg.sender,
            prompt,
            acceptedModels,
            temperature,
            maxTokens,
            frame,
            callback,
            callback == address(0) ? 0 : callbackGasLimit,
            msg.value,
            commitDeadline,
            revealDeadline,
            disputeWindow
        );
    }

    function _validateRequest(
        string calldata prompt,
        string[] calldata acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        SecurityFrame calldata frame,
        uint32 callbackGasLimit
    ) private view returns (uint16 dimBits) {
        if (bytes(prompt).length == 0) revert EmptyPrompt();
        if (bytes(prompt).length > maxPromptBytes) revert PromptTooLong(bytes(prompt).length, maxPromptBytes);
        if (acceptedModels.length == 0) revert EmptyModelList();
        if (acceptedModels.length > MAX_MODELS) revert TooManyModels(acceptedModels.length, MAX_MODELS);
        for (uint256 i = 0; i < acceptedModels.length; ++i) {
            if (bytes(acceptedModels[i]).length == 0) revert EmptyModelName(i);
        }
        if (temperature > MAX_TEMPERATURE) revert TemperatureOutOfRange(temperature);
        if (maxTokens == 0) revert ZeroMaxTokens();
        if (frame.quorum == 0 || frame.quorum > MAX_QUORUM) revert InvalidQuorum(frame.quorum, MAX_QUORUM);
        if (frame.maxTimeMs == 0) revert ZeroTime();
        if (frame.secDistance > ConsensusLib.BASIS_POINTS) revert SecDistanceOutOfRange(frame.secDistance);
        if (frame.secPercentage == 0 || frame.secPercentage > ConsensusLib.BASIS_POINTS) {
            revert SecPercentageOutOfRange(frame.secPercentage);
        }
        dimBits = embeddingDimBits[keccak256(bytes(frame.embeddingModel))];
        if (dimBits == 0) revert UnknownEmbeddingModel(frame.embeddingModel);
        if (callbackGasLimit > MAX_CALLBACK_GAS) revert CallbackGasTooHigh(callbackGasLimit, MAX_CALLBACK_GAS);
    }

    // ------------------------------------------------------------------ commit

    /// @param commitment keccak256(abi.encode(requestId, oracle, keccak256(output), modelIndex, embeddingBits, salt))
    function commit(uint256 requestId, bytes32 commitment) external {
        Request storage request = _openRequest(requestId);
        if (!oracles[msg.sender].registered) revert NotRegistered(msg.sender);
        if (commitment == bytes32(0)) revert EmptyCommitment();
        if (block.timestamp > request.commitDeadline) revert CommitPhaseOver(requestId, request.commitDeadline);
        uint8 seatCount = request.seatCount;
        if (seatCount >= request.quorum) revert SeatsFull(requestId);
        if (_findSeat(requestId, seatCount, msg.sender) < 16) revert AlreadyCommitted(requestId, msg.sender);

        _seats[requestId][seatCount].oracle = msg.sender;
        _seatHashes[requestId][seatCount] = commitment;
        request.seatCount = seatCount + 1;
        emit Committed(requestId, msg.sender, seatCount, commitment);
    }

    // ------------------------------------------------------------------ reveal

    function reveal(
        uint256 requestId,
        string calldata output,
        uint8 modelIndex,
        bytes calldata embeddingBits,
        bytes32 salt
    ) external {
        Request storage request = _openRequest(requestId);
        if (!_revealOpen(request)) revert RevealNotOpen(requestId);
        if (block.timestamp > request.revealDeadline) revert RevealPhaseOver(requestId, request.revealDeadline);
        uint256 seatNo = _findSeat(requestId, request.seatCount, msg.sender);
        if (seatNo >= 16) revert NotCommitted(requestId, msg.sender);
        Seat storage seat = _seats[requestId][seatNo];
        if (seat.revealed) revert AlreadyRevealed(requestId, msg.sender);
        if (modelIndex >= request.modelCount) revert InvalidModelIndex(modelIndex, request.modelCount);
        if (embeddingBits.length * 8 != request.dimBits) {
            revert InvalidEmbeddingLength(embeddingBits.length, request.dimBits / 8);
        }
        bytes32 outputHash = keccak256(bytes(output));
        bytes32 expected = keccak256(abi.encode(requestId, msg.sender, outputHash, modelIndex, embeddingBits, salt));
        bytes32[16] storage hashes = _seatHashes[requestId];
        if (hashes[seatNo] != expected) revert CommitmentMismatch(requestId, msg.sender);

        seat.revealed = true;
        seat.modelIndex = modelIndex;
        hashes[seatNo] = _revealHash(outputHash, embeddingBits);
        request.revealCount += 1;
        request.lastRevealAt = uint40(block.timestamp);
        emit Revealed(requestId, msg.sender, uint8(seatNo), output, modelIndex, embeddingBits);
    }

    // ------------------------------------------------------------------ dispute

    function dispute(uint256 requestId, address accused) external {
        Request storage request = _openRequest(requestId);
        if (accused == msg.sender) revert SelfDispute();
        uint40 closesAt = _disputeDeadline(request);
        if (request.revealCount == 0 || block.timestamp > closesAt) revert DisputeWindowClosed(requestId, closesAt);
        uint256 disputerSeat = _revealedSeat(requestId, request.seatCount, msg.sender);
        uint256 accusedSeat = _revealedSeat(requestId, request.seatCount, accused);
        Seat storage seat = _seats[requestId][accusedSeat];
        uint16 bit = uint16(1 << disputerSeat);
        if (seat.disputedBy & bit != 0) revert AlreadyDisputed(requestId, accused, msg.sender);
        seat.disputedBy |= bit;
        emit Disputed(requestId, accused, msg.sender);
    }

    // ------------------------------------------------------------------ finalize

    /// @notice Settles a request once its dispute window has closed; anyone may call it.
    /// @param bits the revealed embedding of every seat in seat order (empty for seats that never revealed)
    /// @param outputHashes keccak256 of every seat's revealed output in seat order (zero when unrevealed)
    /// @param winnerOutput the winning reveal's output text; ignored when consensus fails
    /// @dev the reveals' data comes as calldata and is checked against one stored hash per seat
    function finalize(
        uint256 requestId,
        bytes[] calldata bits,
        bytes32[] calldata outputHashes,
        string calldata winnerOutput
    ) external nonReentrant {
        Request storage request = _openRequest(requestId);
        uint256 seatCount = request.seatCount;
        if (seatCount == 0) {
            if (block.timestamp <= request.commitDeadline) {
                revert FinalizeTooEarly(requestId, request.commitDeadline);
            }
            _fail(requestId, request, FailureReason.NoCommits);
            return;
        }
        uint40 closesAt = _disputeDeadline(request);
        if (block.timestamp <= closesAt) revert FinalizeTooEarly(requestId, closesAt);
        if (request.revealCount == 0) {
            _fail(requestId, request, FailureReason.NoReveals);
            return;
        }
        if (bits.length != seatCount) revert SeatCountMismatch(bits.length, seatCount);
        if (outputHashes.length != seatCount) revert SeatCountMismatch(outputHashes.length, seatCount);

        uint256 eligible = _eligibleSeats(requestId, request, bits, outputHashes);
        ConsensusLib.Result memory result =
            ConsensusLib.cluster(bits, eligible, request.quorum, request.secDistance, request.secPercentage);
        if (!result.reached) {
            _fail(requestId, request, FailureReason.NoConsensus);
            return;
        }
        if (keccak256(bytes(winnerOutput)) != outputHashes[result.winner]) {
            revert WinnerOutputMismatch(requestId, result.winner);
        }
        request.status = Status.Finalized;
        uint256 reward = _payCluster(requestId, request, result.clusterMask, result.support);
        string memory model = request.acceptedModels[_seats[requestId][result.winner].modelIndex];
        bool delivered = _deliver(requestId, request, winnerOutput, model);
        emit InferenceFinalized(
            requestId, uint8(result.winner), winnerOutput, model, result.clusterMask, reward, delivered
        );
    }

    /// @notice The on-chain clustering, exposed so that off-chain code can be checked against it.
    /// @param bits one revealed embedding per seat, in seat order
    /// @param excluded true for reveals that disputes removed
    function clusterOf(
        bytes[] calldata bits,
        bool[] calldata excluded,
        uint8 quorum,
        uint16 secDistance,
        uint16 secPercentage
    ) external pure returns (ConsensusLib.Result memory) {
        if (excluded.length != bits.length) revert SeatCountMismatch(excluded.length, bits.length);
        uint256 eligible;
        for (uint256 i = 0; i < bits.length; ++i) {
            if (!excluded[i]) eligible |= 1 << i;
        }
        return ConsensusLib.cluster(bits, eligible, quorum, secDistance, secPercentage);
    }

    // ------------------------------------------------------------------ views

    function getRequest(uint256 requestId) external view returns (Request memory) {
        return _requests[requestId];
    }

    /// @return the seat and its stored hash (the commitment, or the reveal hash once revealed)
    function getSeat(uint256 requestId, uint256 seatNo) external view returns (Seat memory, bytes32) {
        return (_seats[requestId][seatNo], _seatHashes[requestId][seatNo]);
    }

    /// @notice When the dispute window of a request closes (it moves while reveals arrive).
    function disputeDeadline(uint256 requestId) external view returns (uint40) {
        return _disputeDeadline(_requests[requestId]);
    }

    function revealOpen(uint256 requestId) external view returns (bool) {
        return _revealOpen(_requests[requestId]);
    }

    // ------------------------------------------------------------------ internals

    function _openRequest(uint256 requestId) private view returns (Request storage request) {
        request = _requests[requestId];
        if (request.status == Status.None) revert UnknownRequest(requestId);
        if (request.status != Status.Open) revert RequestClosed(requestId);
    }

    function _revealOpen(Request storage request) private view returns (bool) {
        return request.seatCount == request.quorum || block.timestamp > request.commitDeadline;
    }

    function _disputeDeadline(Request storage request) private view returns (uint40) {
        uint8 seatCount = request.seatCount;
        bool allRevealed = seatCount > 0 && request.revealCount == seatCount && _revealOpen(request);
        uint40 revealsEnd = allRevealed ? request.lastRevealAt : request.revealDeadline;
        return revealsEnd + disputeWindow;
    }

    /// @return the seat index of `oracle`, or 16 when it holds none
    function _findSeat(uint256 requestId, uint256 seatCount, address oracle) private view returns (uint256) {
        Seat[16] storage seats = _seats[requestId];
        for (uint256 i = 0; i < seatCount; ++i) {
            if (seats[i].oracle == oracle) return i;
        }
        return 16;
    }

    function _revealedSeat(uint256 requestId, uint256 seatCount, address oracle) private view returns (uint256 seatNo) {
        seatNo = _findSeat(requestId, seatCount, oracle);
        if (seatNo >= 16 || !_seats[requestId][seatNo].revealed) revert NotARevealer(requestId, oracle);
    }

    function _revealHash(bytes32 outputHash, bytes calldata bits) private pure returns (bytes32) {
        return keccak256(abi.encode(outputHash, keccak256(bits)));
    }

    /// @dev checks every revealed seat's data against its stored hash and applies dispute exclusion
    function _eligibleSeats(
        uint256 requestId,
        Request storage request,
        bytes[] calldata bits,
        bytes32[] calldata outputHashes
    ) private view returns (uint256 eligible) {
        uint256 revealers = request.revealCount;
        bytes32[16] storage hashes = _seatHashes[requestId];
        for (uint256 i = 0; i < bits.length; ++i) {
            Seat storage seat = _seats[requestId][i];
            if (!seat.revealed) continue;
            if (_revealHash(outputHashes[i], bits[i]) != hashes[i]) revert RevealMismatch(i);
            if (ConsensusLib.excludedByDisputes(ConsensusLib.popcount(seat.disputedBy), revealers)) continue;
            eligible |= 1 << i;
        }
    }

    function _payCluster(uint256 requestId, Request storage request, uint256 clusterMask, uint256 members)
        private
        returns (uint256 reward)
    {
        uint256 fee = request.fee;
        reward = fee / members;
        for (uint256 i = 0; i < request.seatCount; ++i) {
            if (clusterMask & (1 << i) != 0) _pay(_seats[requestId][i].oracle, reward);
        }
        uint256 dust = fee - reward * members;
        if (dust > 0) _pay(request.requester, dust);
    }

    function _deliver(uint256 requestId, Request storage request, string calldata output, string memory model)
        private
        returns (bool delivered)
    {
        address callback = request.callback;
        if (callback == address(0)) return false;
        uint256 gasLimit = request.callbackGasLimit;
        // EIP-150 forwards at most 63/64 of what is left; make sure the consumer gets all it asked for
        uint256 required = (gasLimit * 64) / 63 + CALLBACK_RESERVE;
        if (gasleft() < required) revert InsufficientGasForCallback(gasleft(), required);
        bytes memory payload = abi.encodeCall(IInferenceConsumer.onInferenceResult, (requestId, output, model));
        assembly ("memory-safe") {
            // no return data is copied, so a consumer cannot make finalize pay for a huge revert
            delivered := call(gasLimit, callback, 0, add(payload, 32), mload(payload), 0, 0)
        }
    }

    function _fail(uint256 requestId, Request storage request, FailureReason reason) private {
        request.status = Status.Failed;
        emit InferenceFailed(requestId, reason);
        _pay(request.requester, request.fee);
    }

    /// @dev pays with bounded gas; a payee that cannot take it withdraws later instead
    function _pay(address payee, uint256 amount) private {
        if (amount == 0) return;
        (bool sent,) = payee.call{value: amount, gas: PAYMENT_GAS}("");
        if (!sent) {
            withdrawable[payee] += amount;
            emit PaymentDeferred(payee, amount);
        }
    }

    function _send(address payee, uint256 amount) private {
        if (amount == 0) return;
        (bool sent,) = payee.call{value: amount}("");
        if (!sent) revert TransferFailed();
    }
}
