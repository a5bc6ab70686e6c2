// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ConsensusLib} from "./ConsensusLib.sol";
import {IInferenceConsumer} from "./IInferenceConsumer.sol";

/// @title InferenceCoordinator
/// @notice Carries an LLM inference request through commit, reveal, dispute and finalize.
///         Staked oracle nodes registered before a request commit to an answer and its sign-bit
///         embedding; the `quorum` best stake-weighted tickets hold the seats when commits close;
///         seated nodes reveal, dispute reveals whose embedding does not match their text, and the
///         medoid of the embedding cluster that reaches the requested share of the quorum is
///         delivered. A seat that never reveals, or whose reveal a majority of the quorum
///         excludes, loses a slice of its stake (burnt: it stays here, counted in slashedTotal).
/// @dev Only hashes of reveals are stored; `finalize` takes the embeddings as calldata.
///      Uses transient storage (EIP-1153): it needs a Cancun-capable EVM.
contract InferenceCoordinator {
    // ------------------------------------------------------------------ types

    struct SecurityFrame {
        uint8 quorum;
        uint32 maxTimeMs;
        uint16 secDistance; // basis points of the embedding's bit count
        uint16 secPercentage; // basis points of the quorum
        string embeddingModel;
    }

    /// @notice What a request fixed at creation beyond its own fields (emitted with it).
    struct RequestTerms {
        bytes32 requestHash;
        uint256 seed; // block.prevrandao's low 48 bits: tickets are drawn from it
        uint64 expiresAt;
        uint64 callbackGasPrice;
        uint16 eligibleCount;
        uint16 slashBps;
        uint16 dimBits; // the embedding bits every reveal carries, as the model was registered
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
        NoConsensus,
        Expired
    }

    enum SlashReason {
        NeverRevealed,
        ExcludedByDisputes
    }

    /// @dev packed so that commit and reveal write one slot of it (slot 0), and a request
    ///      without a consumer writes no slot 2; timestamps in uint40 last until year 36812
    struct Request {
        // slot 0: the phase state and what commit and reveal check
        uint40 commitDeadline;
        uint40 revealDeadline;
        uint40 lastRevealAt;
        uint8 quorum;
        uint8 seatCount;
        uint8 revealCount;
        Status status;
        uint16 commitCount; // distinct committers, evicted ones included
        uint16 eligibleCount; // active nodes when the request was made (65535: at least that many)
        uint16 revealedMask; // bit i set once seat i has revealed
        uint16 dimBits;
        uint8 modelCount;
        uint32 maxTokens;
        // slot 1
        address requester;
        uint96 fee; // without the callback prepayment
        // slot 2
        address callback;
        uint32 callbackGasLimit;
        uint64 callbackGasPrice;
        // slot 3: terms fixed at creation
        uint40 createdBlock;
        uint40 expiresAt;
        uint24 disputeWindow; // at most MAX_WINDOW
        bool hasCallback; // so that settling a request without one never reads slot 2
        uint16 secDistance;
        uint16 secPercentage;
        uint16 slashBps;
        uint48 seed; // block.prevrandao of the request's block, its low 48 bits
        uint48 hashTag; // requestHash's low 48 bits: what commit checks (see `commit`)
        // slot 4
        bytes32 requestHash;
        // slot 5 (one slot while the names take up to 31 bytes)
        bytes packedModels; // each accepted model's name after a one-byte length
    }

    /// @notice A request as `getRequest` reports it.
    struct RequestView {
        uint40 commitDeadline;
        uint40 revealDeadline;
        uint40 lastRevealAt;
        uint8 quorum;
        uint8 seatCount;
        uint8 revealCount;
        Status status;
        uint16 commitCount;
        uint16 eligibleCount;
        uint16 revealedMask;
        uint16 dimBits;
        uint8 modelCount;
        uint32 maxTokens;
        address requester;
        uint96 fee;
        address callback;
        uint32 callbackGasLimit;
        uint64 callbackGasPrice;
        uint40 createdBlock;
        uint40 expiresAt;
        uint32 disputeWindow;
        uint16 secDistance;
        uint16 secPercentage;
        uint16 slashBps;
        uint256 seed;
        bytes32 requestHash;
        string[] acceptedModels;
    }

    /// @dev one slot; a ticket is below 2**88 because a committing stake is at least MIN_STAKE_FLOOR
    struct Seat {
        address oracle;
        uint88 ticket;
        uint8 modelIndex;
    }

    /// @notice A seat as `getSeat` reports it.
    struct SeatView {
        address oracle;
        uint256 ticket;
        uint8 modelIndex;
        bool revealed;
        uint16 disputedBy; // bit j set when seat j disputed this reveal
    }

    struct Oracle {
        uint128 stake;
        bool registered;
        uint40 eligibleFrom; // block number of registration or of the last stake added
        uint40 lockedUntil; // the latest expiry of a request it committed to
        uint40 unbondingEndsAt; // 0 while active
    }

    // ------------------------------------------------------------------ errors

    error NotOwner();
    error NotPendingOwner(address caller);
    error Reentrancy();
    error ParameterOutOfRange(string parameter, uint256 value, uint256 min, uint256 max);
    error InvalidDimBits(uint16 dimBits);
    error EmptyEmbeddingModelName();
    error StakeTooLow(uint256 stake, uint256 required);
    error StakeTooHigh(uint256 stake, uint256 maxStake);
    error NotRegistered(address oracle);
    error AlreadyRegistered(address oracle);
    error OracleUnbonding(address oracle);
    error NotUnbonding(address oracle);
    error StillUnbonding(address oracle, uint40 unbondingEndsAt);
    error TransferFailed();
    error NothingToWithdraw();

    error EmptyPrompt();
    error PromptTooLong(uint256 length, uint256 maxLength);
    error EmptyModelList();
    error TooManyModels(uint256 count, uint256 maxCount);
    error EmptyModelName(uint256 index);
    error ModelNameTooLong(uint256 index, uint256 length, uint256 maxLength);
    error TemperatureOutOfRange(uint16 temperature);
    error ZeroMaxTokens();
    error InvalidQuorum(uint8 quorum, uint8 maxQuorum);
    error ZeroTime();
    error SecDistanceOutOfRange(uint16 secDistance);
    error SecPercentageOutOfRange(uint16 secPercentage);
    error UnknownEmbeddingModel(string embeddingModel);
    error CallbackGasTooHigh(uint32 callbackGasLimit, uint32 maxCallbackGas);
    error NoCodeAtCallback(address callback);
    error CallbackGasPriceTooLow(uint256 price, uint256 basefee);
    error FeeTooLow(uint256 sent, uint256 required);
    error FeeTooHigh(uint256 sent, uint256 maxFee);

    error UnknownRequest(uint256 requestId);
    error RequestClosed(uint256 requestId);
    error StaleRequest(uint256 requestId);
    error EmptyCommitment();
    error CommitPhaseOver(uint256 requestId, uint40 commitDeadline);
    error NotEligible(uint256 requestId, address oracle);
    error AlreadyCommitted(uint256 requestId, address oracle);
    error TicketTooWeak(uint256 requestId, uint256 ticket, uint256 worst);
    error NotCommitted(uint256 requestId, address oracle);
    error RevealNotOpen(uint256 requestId);
    error RevealPhaseOver(uint256 requestId, uint40 revealDeadline);
    error AlreadyRevealed(uint256 requestId, address oracle);
    error OutputTooLong(uint256 length, uint256 max);
    error InvalidModelIndex(uint8 modelIndex, uint8 modelCount);
    error InvalidEmbeddingLength(uint256 length, uint256 expected);
    error CommitmentMismatch(uint256 requestId, address oracle);
    error NotARevealer(uint256 requestId, address oracle);
    error SelfDispute();
    error AlreadyDisputed(uint256 requestId, address accused, address disputer);
    error DisputeWindowClosed(uint256 requestId, uint40 closedAt);
    error FinalizeTooEarly(uint256 requestId, uint40 opensAfter);
    error RequestExpired(uint256 requestId, uint40 expiresAt);
    error NotExpired(uint256 requestId, uint40 expiresAt);
    error SeatCountMismatch(uint256 given, uint256 seats);
    error RevealMismatch(uint256 seat);
    error WinnerOutputMismatch(uint256 requestId, uint256 winnerSeat);
    error InsufficientGasForCallback(uint256 available, uint256 required);

    // ------------------------------------------------------------------ events

    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event OracleRegistered(address indexed oracle, uint256 stake);
    event StakeAdded(address indexed oracle, uint256 amount, uint256 stake);
    event UnbondingStarted(address indexed oracle, uint64 unbondingEndsAt);
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
        uint32 disputeWindow,
        RequestTerms terms
    );
    event Committed(
        uint256 indexed requestId,
        address indexed oracle,
        uint8 seat,
        bytes32 commitment,
        uint256 ticket,
        address evicted
    );
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
    event Slashed(uint256 indexed requestId, address indexed oracle, uint256 amount, uint8 reason);
    event PaymentDeferred(address indexed payee, uint256 amount);

    // ------------------------------------------------------------------ configuration

    uint8 public constant MAX_QUORUM = 16;
    uint256 public constant MAX_MODELS = 8;
    uint256 public constant MAX_MODEL_NAME_BYTES = 255;
    uint16 public constant MAX_TEMPERATURE = 2000;
    uint32 public constant MAX_CALLBACK_GAS = 2_000_000;
    /// @notice The longest revealed output: maxTokens times this many bytes.
    uint256 public constant MAX_OUTPUT_BYTES_PER_TOKEN = 64;
    /// @notice Upper bound of the reveal window, the dispute window and the expiry grace.
    uint32 public constant MAX_WINDOW = 1 days;
    uint32 public constant MAX_UNBONDING_PERIOD = 30 days;
    uint32 public constant MIN_UNBONDING_PERIOD = 1 hours;
    /// @notice No node commits with less stake (it keeps every ticket below 2**88); minStake is never lower.
    uint256 public constant MIN_STAKE_FLOOR = 1e14;
    uint16 public constant MAX_EMBEDDING_BITS = 4096;
    /// @dev gas kept back for finalize's own work after the consumer callback returns
    uint256 public constant CALLBACK_RESERVE = 40_000;
    uint256 private constant PAYMENT_GAS = 10_000;
    uint256 private constant SEAT_MASK = 0xff;
    uint256 private constant NOT_SEATED = 0xff;

    address public owner;
    address public pendingOwner;
    // what every request reads, in one slot
    uint96 public minFeePerSeat = 1e12;
    uint32 public maxPromptBytes = 8192;
    uint32 public revealWindow;
    uint32 public disputeWindow;
    uint32 public expiryGrace = 1 hours;
    uint16 public slashBps = 1000;
    // what every request or registration writes, in one slot
    uint64 public nextRequestId = 1;
    /// @notice Registered nodes that are not unbonding.
    uint32 public activeCount;
    uint32 public unbondingPeriod = 1 days;
    uint128 public minStake = 0.01 ether;
    /// @notice All stake ever slashed: burnt, it stays in this contract for good.
    uint128 public slashedTotal;

    mapping(address => Oracle) public oracles;
    mapping(bytes32 => uint16) public embeddingDimBits;
    mapping(address => uint256) public withdrawable;

    mapping(uint256 => Request) private _requests;
    mapping(uint256 => Seat[16]) private _seats;
    /// @dev per request and node, nonzero once it has committed (so nobody commits twice): the
    ///      top 248 bits of its commitment, after its reveal those of its reveal hash
    ///      keccak256(abi.encode(outputHash, keccak256(bits))); the low byte is its seat,
    ///      NOT_SEATED once a better ticket has taken the seat
    mapping(uint256 => mapping(address => uint256)) private _commitWords;
    /// @dev per request: bit (16 * accused seat + disputer seat) set once that dispute is made
    mapping(uint256 => uint256) private _disputes;

    bool private transient _entered;

    constructor(uint32 revealWindow_, uint32 disputeWindow_) {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
        _setWindows(revealWindow_, disputeWindow_);
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

    // ------------------------------------------------------------------ owner

    function transferOwnership(address newOwner) external onlyOwner {
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotPendingOwner(msg.sender);
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        pendingOwner = address(0);
    }

    function setMinStake(uint256 value) external onlyOwner {
        _inRange("minStake", value, MIN_STAKE_FLOOR, type(uint128).max);
        minStake = uint128(value);
    }

    function setMinFeePerSeat(uint256 value) external onlyOwner {
        _inRange("minFeePerSeat", value, 1, type(uint96).max);
        minFeePerSeat = uint96(value);
    }

    function setMaxPromptBytes(uint256 value) external onlyOwner {
        _inRange("maxPromptBytes", value, 1, 1 << 20);
        maxPromptBytes = uint32(value);
    }

    /// @notice Applies to requests made afterwards only.
    function setWindows(uint32 revealWindow_, uint32 disputeWindow_) external onlyOwner {
        _setWindows(revealWindow_, disputeWindow_);
    }

    /// @notice Applies to requests made afterwards only.
    function setExpiryGrace(uint32 value) external onlyOwner {
        _inRange("expiryGrace", value, 1, MAX_WINDOW);
        expiryGrace = value;
    }

    /// @notice Applies to requests made afterwards only.
    function setSlashBps(uint16 value) external onlyOwner {
        _inRange("slashBps", value, 0, ConsensusLib.BASIS_POINTS);
        slashBps = value;
    }

    /// @notice Applies to deregistrations started afterwards only.
    function setUnbondingPeriod(uint32 value) external onlyOwner {
        _inRange("unbondingPeriod", value, MIN_UNBONDING_PERIOD, MAX_UNBONDING_PERIOD);
        unbondingPeriod = value;
    }

    /// @notice dimBits: a multiple of 8 from 8 to 4096, or 0 to remove the model.
    function setEmbeddingModel(string calldata name, uint16 dimBits) external onlyOwner {
        _setEmbeddingModel(name, dimBits);
    }

    function _setWindows(uint32 revealWindow_, uint32 disputeWindow_) private {
        _inRange("revealWindow", revealWindow_, 1, MAX_WINDOW);
        _inRange("disputeWindow", disputeWindow_, 1, MAX_WINDOW);
        revealWindow = revealWindow_;
        disputeWindow = disputeWindow_;
    }

    function _setEmbeddingModel(string memory name, uint16 dimBits) private {
        if (bytes(name).length == 0) revert EmptyEmbeddingModelName();
        if (dimBits != 0 && (dimBits % 8 != 0 || dimBits > MAX_EMBEDDING_BITS)) revert InvalidDimBits(dimBits);
        embeddingDimBits[keccak256(bytes(name))] = dimBits;
        emit EmbeddingModelSet(name, dimBits);
    }

    function _inRange(string memory parameter, uint256 value, uint256 min, uint256 max) private pure {
        if (value < min || value > max) revert ParameterOutOfRange(parameter, value, min, max);
    }

    // ------------------------------------------------------------------ oracles

    function register() external payable {
        Oracle storage oracle = oracles[msg.sender];
        if (oracle.registered) revert AlreadyRegistered(msg.sender);
        if (msg.value < minStake) revert StakeTooLow(msg.value, minStake);
        if (msg.value > type(uint128).max) revert StakeTooHigh(msg.value, type(uint128).max);
        oracle.registered = true;
        oracle.stake = uint128(msg.value);
        oracle.eligibleFrom = uint40(block.number);
        activeCount += 1;
        emit OracleRegistered(msg.sender, msg.value);
    }

    /// @notice Adds stake; it counts only for requests made in later blocks.
    function addStake() external payable {
        Oracle storage oracle = _activeOracle(msg.sender);
        if (msg.value == 0) revert StakeTooLow(0, 1);
        uint256 stake = oracle.stake + msg.value;
        if (stake > type(uint128).max) revert StakeTooHigh(stake, type(uint128).max);
        oracle.stake = uint128(stake);
        oracle.eligibleFrom = uint40(block.number);
        emit StakeAdded(msg.sender, msg.value, stake);
    }

    /// @notice Starts unbonding: no more commits; the stake can be withdrawn once every request
    ///         the node committed to has expired and the unbonding period has passed.
    function deregister() external {
        Oracle storage oracle = _activeOracle(msg.sender);
        uint256 lockedUntil = oracle.lockedUntil;
        uint256 from = block.timestamp > lockedUntil ? block.timestamp : lockedUntil;
        uint40 endsAt = uint40(from + unbondingPeriod);
        oracle.unbondingEndsAt = endsAt;
        activeCount -= 1;
        emit UnbondingStarted(msg.sender, endsAt);
    }

    function withdrawStake() external nonReentrant {
        Oracle storage oracle = oracles[msg.sender];
        if (!oracle.registered) revert NotRegistered(msg.sender);
        uint40 endsAt = oracle.unbondingEndsAt;
        if (endsAt == 0) revert NotUnbonding(msg.sender);
        if (block.timestamp < endsAt) revert StillUnbonding(msg.sender, endsAt);
        uint256 stake = oracle.stake;
        delete oracles[msg.sender];
        emit OracleDeregistered(msg.sender, stake);
        _send(msg.sender, stake);
    }

    /// @notice Withdraws payments that could not be sent when they were made.
    function withdraw() external nonReentrant {
        _withdraw(payable(msg.sender));
    }

    /// @notice Withdraws them to `to`: for a payee that cannot take ETH itself (a contract
    ///         without `receive`, whose payments were deferred for that very reason).
    function withdrawTo(address payable to) external nonReentrant {
        _withdraw(to);
    }

    function _withdraw(address payable to) private {
        uint256 amount = withdrawable[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        withdrawable[msg.sender] = 0;
        _send(to, amount);
    }

    function _activeOracle(address node) private view returns (Oracle storage oracle) {
        oracle = oracles[node];
        if (!oracle.registered) revert NotRegistered(node);
        if (oracle.unbondingEndsAt != 0) revert OracleUnbonding(node);
    }

    // ------------------------------------------------------------------ requests

    /// @notice msg.value = fee + callbackGasLimit * callbackGasPrice (the latter only with a callback).
    function requestInference(
        string calldata prompt,
        string[] calldata acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        SecurityFrame calldata frame,
        address callback,
        uint32 callbackGasLimit,
        uint64 callbackGasPrice
    ) external payable returns (uint256 requestId) {
        uint16 dimBits = _validateRequest(prompt, acceptedModels, temperature, maxTokens, frame, callbackGasLimit);
        if (callback == address(0)) {
            callbackGasLimit = 0;
            callbackGasPrice = 0;
        } else {
            if (callback.code.length == 0) revert NoCodeAtCallback(callback);
            if (callbackGasPrice < block.basefee) revert CallbackGasPriceTooLow(callbackGasPrice, block.basefee);
        }
        uint256 fee = _checkFee(frame.quorum, uint256(callbackGasLimit) * callbackGasPrice);

        requestId = nextRequestId++;
        Request storage request = _requests[requestId];
        uint40 commitDeadline = uint40(block.timestamp + (uint256(frame.maxTimeMs) + 999) / 1000);
        uint40 revealDeadline = commitDeadline + revealWindow;
        uint32 disputeWindow_ = disputeWindow;
        uint256 active = activeCount;
        RequestTerms memory terms = RequestTerms({
            requestHash: bytes32(0),
            seed: uint48(block.prevrandao),
            expiresAt: uint64(revealDeadline) + disputeWindow_ + expiryGrace,
            callbackGasPrice: callbackGasPrice,
            eligibleCount: active > type(uint16).max ? type(uint16).max : uint16(active),
            slashBps: slashBps,
            dimBits: dimBits
        });
        terms.requestHash = _requestHash(
            requestId, prompt, acceptedModels, temperature, maxTokens, frame, callback, callbackGasLimit, fee, terms
        );

        request.commitDeadline = commitDeadline;
        request.revealDeadline = revealDeadline;
        request.quorum = frame.quorum;
        request.status = Status.Open;
        request.eligibleCount = terms.eligibleCount;
        request.dimBits = dimBits;
        request.modelCount = uint8(acceptedModels.length);
        request.maxTokens = maxTokens;
        request.requester = msg.sender;
        request.fee = uint96(fee);
        if (callback != address(0)) {
            request.callback = callback;
            request.callbackGasLimit = callbackGasLimit;
            request.callbackGasPrice = callbackGasPrice;
            request.hasCallback = true;
        }
        request.createdBlock = uint40(block.number);
        request.expiresAt = uint40(terms.expiresAt);
        request.disputeWindow = uint24(disputeWindow_);
        request.secDistance = frame.secDistance;
        request.secPercentage = frame.secPercentage;
        request.slashBps = terms.slashBps;
        request.seed = uint48(terms.seed);
        request.hashTag = uint48(uint256(terms.requestHash));
        request.requestHash = terms.requestHash;
        request.packedModels = _packModels(acceptedModels);

        emit InferenceRequested(
            requestId,
            msg.sender,
            prompt,
            acceptedModels,
            temperature,
            maxTokens,
            frame,
            callback,
            callbackGasLimit,
            fee,
            commitDeadline,
            revealDeadline,
            disputeWindow_,
            terms
        );
    }

    /// @return fee what the request pays its nodes: msg.value less the callback prepayment
    function _checkFee(uint8 quorum, uint256 prepay) private view returns (uint256 fee) {
        uint256 required = prepay + minFeePerSeat * quorum;
        if (msg.value < required) revert FeeTooLow(msg.value, required);
        fee = msg.value - prepay;
        if (fee > type(uint96).max) revert FeeTooHigh(fee, type(uint96).max);
    }

    function _requestHash(
        uint256 requestId,
        string calldata prompt,
        string[] calldata acceptedModels,
        uint16 temperature,
        uint32 maxTokens,
        SecurityFrame calldata frame,
        address callback,
        uint32 callbackGasLimit,
        uint256 fee,
        RequestTerms memory terms
    ) private view returns (bytes32) {
        return keccak256(
            abi.encode(
                requestId,
                msg.sender,
                keccak256(bytes(prompt)),
                keccak256(abi.encode(acceptedModels)),
                temperature,
                maxTokens,
                frame.quorum,
                frame.maxTimeMs,
                frame.secDistance,
                frame.secPercentage,
                keccak256(bytes(frame.embeddingModel)),
                callback,
                callbackGasLimit,
                terms.callbackGasPrice,
                fee,
                terms.seed,
                // the owner's terms as this request fixed them: the same request mined again
                // after a reorg under other terms must not take the commitments made to it
                terms.slashBps,
                terms.dimBits,
                revealWindow,
                disputeWindow,
                expiryGrace
            )
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
            uint256 length = bytes(acceptedModels[i]).length;
            if (length == 0) revert EmptyModelName(i);
            if (length > MAX_MODEL_NAME_BYTES) revert ModelNameTooLong(i, length, MAX_MODEL_NAME_BYTES);
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

    /// @param requestHash the hash of the request the commitment was made for: a commit made
    ///        before a reorg, mined again once the id holds another request (or the same one
    ///        with another seed), is refused (`StaleRequest`) instead of taking a seat it can
    ///        never reveal. Its low 48 bits are checked, against a tag stored in a slot commit
    ///        reads anyway (the whole hash cost 2.1k gas a commit): the hash covers the
    ///        request's prevrandao, unknown before its block, so a request made to match
    ///        another's tag must be ground among 2**48 variants within a reorg
    /// @param commitment keccak256(abi.encode(requestId, requestHash, oracle, keccak256(output),
    ///        modelIndex, embeddingBits, salt)); its top 248 bits are kept and checked
    function commit(uint256 requestId, bytes32 requestHash, bytes32 commitment) external {
        Request storage request = _openRequest(requestId);
        if (uint48(uint256(requestHash)) != request.hashTag) revert StaleRequest(requestId);
        if (uint256(commitment) >> 8 == 0) revert EmptyCommitment();
        if (block.timestamp > request.commitDeadline) revert CommitPhaseOver(requestId, request.commitDeadline);
        Oracle storage oracle = _activeOracle(msg.sender);
        if (oracle.eligibleFrom >= request.createdBlock) revert NotEligible(requestId, msg.sender);
        uint256 stake = oracle.stake;
        if (stake < MIN_STAKE_FLOOR) revert StakeTooLow(stake, MIN_STAKE_FLOOR);
        mapping(address => uint256) storage words = _commitWords[requestId];
        if (words[msg.sender] != 0) revert AlreadyCommitted(requestId, msg.sender);

        uint256 ticket = ConsensusLib.ticket(request.seed, requestId, msg.sender, stake);
        uint256 seatCount = request.seatCount;
        uint256 seatNo = seatCount;
        address evicted;
        Seat[16] storage seats = _seats[requestId];
        if (seatCount < request.quorum) {
            seatCount += 1;
        } else {
            uint256 worst;
            (seatNo, worst) = _worstSeat(seats, seatCount);
            if (ticket >= worst) revert TicketTooWeak(requestId, ticket, worst);
            evicted = seats[seatNo].oracle;
            words[evicted] = NOT_SEATED; // nonzero: it cannot commit again
        }
        seats[seatNo] = Seat({oracle: msg.sender, ticket: uint88(ticket), modelIndex: 0});
        words[msg.sender] = (uint256(commitment) & ~SEAT_MASK) | seatNo;
        request.seatCount = uint8(seatCount);
        request.commitCount += 1;
        uint40 expiresAt = request.expiresAt;
        if (oracle.lockedUntil < expiresAt) oracle.lockedUntil = expiresAt;
        emit Committed(requestId, msg.sender, uint8(seatNo), commitment, ticket, evicted);
    }

    /// @dev the seat with the largest ticket; among equal ones the highest seat index
    function _worstSeat(Seat[16] storage seats, uint256 seatCount)
        private
        view
        returns (uint256 seatNo, uint256 worst)
    {
        for (uint256 i = 0; i < seatCount; ++i) {
            uint256 ticket = seats[i].ticket;
            if (ticket >= worst) {
                worst = ticket;
                seatNo = i;
            }
        }
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
        if (!_commitsClosed(request)) revert RevealNotOpen(requestId);
        if (block.timestamp > request.revealDeadline) revert RevealPhaseOver(requestId, request.revealDeadline);
        uint256 maxLength = uint256(request.maxTokens) * MAX_OUTPUT_BYTES_PER_TOKEN;
        if (bytes(output).length > maxLength) revert OutputTooLong(bytes(output).length, maxLength);
        mapping(address => uint256) storage words = _commitWords[requestId];
        uint256 word = words[msg.sender];
        uint256 seatNo = word & SEAT_MASK;
        if (word == 0 || seatNo == NOT_SEATED) revert NotCommitted(requestId, msg.sender);
        uint16 bit = uint16(1 << seatNo);
        if (request.revealedMask & bit != 0) revert AlreadyRevealed(requestId, msg.sender);
        if (modelIndex >= request.modelCount) revert InvalidModelIndex(modelIndex, request.modelCount);
        if (embeddingBits.length * 8 != request.dimBits) {
            revert InvalidEmbeddingLength(embeddingBits.length, request.dimBits / 8);
        }
        bytes32 outputHash = keccak256(bytes(output));
        bytes32 expected = keccak256(
            abi.encode(requestId, request.requestHash, msg.sender, outputHash, modelIndex, embeddingBits, salt)
        );
        if ((word ^ uint256(expected)) >> 8 != 0) revert CommitmentMismatch(requestId, msg.sender);

        if (modelIndex != 0) _seats[requestId][seatNo].modelIndex = modelIndex;
        words[msg.sender] = (uint256(_revealHash(outputHash, embeddingBits)) & ~SEAT_MASK) | seatNo;
        request.revealedMask |= bit;
        request.revealCount += 1;
        request.lastRevealAt = uint40(block.timestamp);
        emit Revealed(requestId, msg.sender, uint8(seatNo), output, modelIndex, embeddingBits);
    }

    // ------------------------------------------------------------------ dispute

    /// @notice A revealer says another's reveal is faulty; a strict majority of the quorum excludes it.
    /// @param requestHash the hash of the request the dispute was made for, as for `commit`: a
    ///        dispute mined again after a reorg that gave the id to another request is refused
    function dispute(uint256 requestId, bytes32 requestHash, address accused) external {
        Request storage request = _openRequest(requestId);
        if (uint48(uint256(requestHash)) != request.hashTag) revert StaleRequest(requestId);
        if (accused == msg.sender) revert SelfDispute();
        uint40 closesAt = _disputeDeadline(request);
        if (request.revealCount == 0 || block.timestamp > closesAt) revert DisputeWindowClosed(requestId, closesAt);
        uint256 disputerSeat = _revealedSeat(requestId, request, msg.sender);
        uint256 accusedSeat = _revealedSeat(requestId, request, accused);
        uint256 bit = 1 << (accusedSeat * 16 + disputerSeat);
        uint256 disputes = _disputes[requestId];
        if (disputes & bit != 0) revert AlreadyDisputed(requestId, accused, msg.sender);
        _disputes[requestId] = disputes | bit;
        emit Disputed(requestId, accused, msg.sender);
    }

    // ------------------------------------------------------------------ finalize

    /// @notice Settles a request once its dispute window has closed and before it expires; anyone may call it.
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
        if (block.timestamp > request.expiresAt) revert RequestExpired(requestId, request.expiresAt);
        uint256 seatCount = request.seatCount;
        if (seatCount == 0) {
            if (!_commitsClosed(request)) revert FinalizeTooEarly(requestId, request.commitDeadline);
            _fail(requestId, request, FailureReason.NoCommits);
            return;
        }
        uint40 closesAt = _disputeDeadline(request);
        if (block.timestamp <= closesAt) revert FinalizeTooEarly(requestId, closesAt);
        (address[] memory seated, uint256[] memory tickets) = _seated(requestId, seatCount);
        uint256 excluded = _excludedSeats(requestId, request);
        _slashFaulty(requestId, request, seated, excluded);
        if (request.revealCount == 0) {
            _fail(requestId, request, FailureReason.NoReveals);
            return;
        }
        if (bits.length != seatCount) revert SeatCountMismatch(bits.length, seatCount);
        if (outputHashes.length != seatCount) revert SeatCountMismatch(outputHashes.length, seatCount);

        uint256 eligible = _checkReveals(requestId, request.revealedMask, seated, bits, outputHashes) & ~excluded;
        ConsensusLib.Result memory result = ConsensusLib.cluster(
            bits, eligible, tickets, request.quorum, request.secDistance, request.secPercentage
        );
        if (!result.reached) {
            _fail(requestId, request, FailureReason.NoConsensus);
            return;
        }
        if (keccak256(bytes(winnerOutput)) != outputHashes[result.winner]) {
            revert WinnerOutputMismatch(requestId, result.winner);
        }
        request.status = Status.Finalized;
        uint256 reward = _payCluster(request, seated, result.clusterMask, result.support);
        string memory model = _modelAt(request, _seats[requestId][result.winner].modelIndex);
        bool delivered = _deliver(requestId, request, winnerOutput, model);
        emit InferenceFinalized(
            requestId, uint8(result.winner), winnerOutput, model, result.clusterMask, reward, delivered
        );
    }

    /// @notice Settles a request nobody finalized before it expired; anyone may call it. The
    ///         requester gets the fee and the callback prepayment back; faulty seats are slashed.
    function expire(uint256 requestId) external nonReentrant {
        Request storage request = _openRequest(requestId);
        if (block.timestamp <= request.expiresAt) revert NotExpired(requestId, request.expiresAt);
        uint256 seatCount = request.seatCount;
        if (seatCount > 0) {
            (address[] memory seated,) = _seated(requestId, seatCount);
            _slashFaulty(requestId, request, seated, _excludedSeats(requestId, request));
        }
        _fail(requestId, request, FailureReason.Expired);
    }

    /// @notice The on-chain clustering, exposed so that off-chain code can be checked against it.
    /// @param bits one revealed embedding per seat, in seat order
    /// @param excluded true for reveals that take no part (unrevealed, or removed by disputes)
    /// @param tickets one ticket per seat, in seat order
    function clusterOf(
        bytes[] calldata bits,
        bool[] calldata excluded,
        uint256[] calldata tickets,
        uint8 quorum,
        uint16 secDistance,
        uint16 secPercentage
    ) external pure returns (ConsensusLib.Result memory) {
        if (excluded.length != bits.length) revert SeatCountMismatch(excluded.length, bits.length);
        if (tickets.length != bits.length) revert SeatCountMismatch(tickets.length, bits.length);
        uint256 eligible;
        for (uint256 i = 0; i < bits.length; ++i) {
            if (!excluded[i]) eligible |= 1 << i;
        }
        return ConsensusLib.cluster(bits, eligible, tickets, quorum, secDistance, secPercentage);
    }

    /// @notice A node's ticket for a request (smaller is better), as commit computes it.
    function ticketOf(uint256 seed, uint256 requestId, address node, uint256 stake)
        external
        pure
        returns (uint256)
    {
        return ConsensusLib.ticket(seed, requestId, node, stake);
    }

    // ------------------------------------------------------------------ views

    function getRequest(uint256 requestId) external view returns (RequestView memory view_) {
        Request storage r = _requests[requestId];
        view_.commitDeadline = r.commitDeadline;
        view_.revealDeadline = r.revealDeadline;
        view_.lastRevealAt = r.lastRevealAt;
        view_.quorum = r.quorum;
        view_.seatCount = r.seatCount;
        view_.revealCount = r.revealCount;
        view_.status = r.status;
        view_.commitCount = r.commitCount;
        view_.eligibleCount = r.eligibleCount;
        view_.revealedMask = r.revealedMask;
        view_.dimBits = r.dimBits;
        view_.modelCount = r.modelCount;
        view_.maxTokens = r.maxTokens;
        view_.requester = r.requester;
        view_.fee = r.fee;
        view_.callback = r.callback;
        view_.callbackGasLimit = r.callbackGasLimit;
        view_.callbackGasPrice = r.callbackGasPrice;
        view_.createdBlock = r.createdBlock;
        view_.expiresAt = r.expiresAt;
        view_.disputeWindow = r.disputeWindow;
        view_.secDistance = r.secDistance;
        view_.secPercentage = r.secPercentage;
        view_.slashBps = r.slashBps;
        view_.seed = r.seed;
        view_.requestHash = r.requestHash;
        view_.acceptedModels = _unpackModels(r.packedModels, r.modelCount);
    }

    /// @return the seat and its stored word: the top 248 bits of the commitment (of the reveal
    ///         hash once revealed) with the seat index in the low byte
    function getSeat(uint256 requestId, uint256 seatNo) external view returns (SeatView memory, bytes32) {
        Seat storage seat = _seats[requestId][seatNo];
        Request storage request = _requests[requestId];
        SeatView memory view_ = SeatView({
            oracle: seat.oracle,
            ticket: seat.ticket,
            modelIndex: seat.modelIndex,
            revealed: request.revealedMask & (1 << seatNo) != 0,
            disputedBy: uint16(_disputes[requestId] >> (seatNo * 16))
        });
        return (view_, seat.oracle == address(0) ? bytes32(0) : bytes32(_commitWords[requestId][seat.oracle]));
    }

    /// @notice When the dispute window of a request closes (it moves while reveals arrive).
    function disputeDeadline(uint256 requestId) external view returns (uint40) {
        return _disputeDeadline(_requests[requestId]);
    }

    /// @notice Whether no more commits can arrive: the commit deadline has passed, or every
    ///         node that could commit has.
    function commitsClosed(uint256 requestId) external view returns (bool) {
        return _commitsClosed(_requests[requestId]);
    }

    /// @notice Reveals are open once commits have closed (until the reveal deadline).
    function revealOpen(uint256 requestId) external view returns (bool) {
        return _commitsClosed(_requests[requestId]);
    }

    // ------------------------------------------------------------------ internals

    /// @dev each name after a one-byte length: a single model of up to 30 bytes takes one slot
    function _packModels(string[] calldata models) private pure returns (bytes memory packed) {
        for (uint256 i = 0; i < models.length; ++i) {
            packed = bytes.concat(packed, bytes1(uint8(bytes(models[i]).length)), bytes(models[i]));
        }
    }

    function _unpackModels(bytes memory packed, uint256 count) private pure returns (string[] memory models) {
        models = new string[](count);
        uint256 offset;
        for (uint256 i = 0; i < count; ++i) {
            (models[i], offset) = _nameAt(packed, offset);
        }
    }

    function _modelAt(Request storage request, uint256 index) private view returns (string memory name) {
        bytes memory packed = request.packedModels;
        uint256 offset;
        for (uint256 i = 0; i <= index; ++i) {
            (name, offset) = _nameAt(packed, offset);
        }
    }

    /// @return name the name whose length byte is at `offset`
    /// @return next the offset of the next name's length byte
    function _nameAt(bytes memory packed, uint256 offset) private pure returns (string memory name, uint256 next) {
        uint256 length = uint8(packed[offset]);
        bytes memory raw = new bytes(length);
        assembly ("memory-safe") {
            mcopy(add(raw, 32), add(add(packed, 33), offset), length)
        }
        return (string(raw), offset + 1 + length);
    }

    function _openRequest(uint256 requestId) private view returns (Request storage request) {
        request = _requests[requestId];
        if (request.status == Status.None) revert UnknownRequest(requestId);
        if (request.status != Status.Open) revert RequestClosed(requestId);
    }

    function _commitsClosed(Request storage request) private view returns (bool) {
        uint16 eligibleCount = request.eligibleCount;
        return block.timestamp > request.commitDeadline
            || (request.commitCount == eligibleCount && eligibleCount != type(uint16).max);
    }

    function _disputeDeadline(Request storage request) private view returns (uint40) {
        uint8 seatCount = request.seatCount;
        // a reveal needs closed commits, so every seat having revealed means the seats are final
        bool allRevealed = seatCount > 0 && request.revealCount == seatCount;
        uint40 revealsEnd = allRevealed ? request.lastRevealAt : request.revealDeadline;
        return revealsEnd + request.disputeWindow;
    }

    function _revealedSeat(uint256 requestId, Request storage request, address oracle)
        private
        view
        returns (uint256 seatNo)
    {
        uint256 word = _commitWords[requestId][oracle];
        seatNo = word & SEAT_MASK;
        if (word == 0 || seatNo == NOT_SEATED || request.revealedMask & (1 << seatNo) == 0) {
            revert NotARevealer(requestId, oracle);
        }
    }

    function _revealHash(bytes32 outputHash, bytes calldata bits) private pure returns (bytes32) {
        return keccak256(abi.encode(outputHash, keccak256(bits)));
    }

    function _seated(uint256 requestId, uint256 seatCount)
        private
        view
        returns (address[] memory seated, uint256[] memory tickets)
    {
        seated = new address[](seatCount);
        tickets = new uint256[](seatCount);
        Seat[16] storage seats = _seats[requestId];
        for (uint256 i = 0; i < seatCount; ++i) {
            Seat storage seat = seats[i];
            seated[i] = seat.oracle;
            tickets[i] = seat.ticket;
        }
    }

    /// @return excluded bit i set when a strict majority of the quorum disputed seat i
    function _excludedSeats(uint256 requestId, Request storage request) private view returns (uint256 excluded) {
        uint256 disputes = _disputes[requestId];
        if (disputes == 0) return 0;
        uint256 quorum = request.quorum;
        uint256 seatCount = request.seatCount;
        for (uint256 i = 0; i < seatCount; ++i) {
            uint256 count = ConsensusLib.popcount((disputes >> (i * 16)) & 0xffff);
            if (ConsensusLib.excludedByDisputes(count, quorum)) excluded |= 1 << i;
        }
    }

    /// @dev checks every revealed seat's data against its stored hash
    /// @return revealed bit i set for each revealed seat
    function _checkReveals(
        uint256 requestId,
        uint256 revealed,
        address[] memory seated,
        bytes[] calldata bits,
        bytes32[] calldata outputHashes
    ) private view returns (uint256) {
        mapping(address => uint256) storage words = _commitWords[requestId];
        for (uint256 i = 0; i < seated.length; ++i) {
            if (revealed & (1 << i) == 0) continue;
            uint256 expected = uint256(_revealHash(outputHashes[i], bits[i]));
            if ((words[seated[i]] ^ expected) >> 8 != 0) revert RevealMismatch(i);
        }
        return revealed;
    }

    /// @dev slashes every seat that never revealed and every reveal excluded by disputes
    function _slashFaulty(uint256 requestId, Request storage request, address[] memory seated, uint256 excluded)
        private
    {
        uint256 revealed = request.revealedMask;
        uint256 bps = request.slashBps;
        if (bps == 0) return;
        uint256 total;
        for (uint256 i = 0; i < seated.length; ++i) {
            uint256 bit = 1 << i;
            uint8 reason;
            if (revealed & bit == 0) reason = uint8(SlashReason.NeverRevealed);
            else if (excluded & bit != 0) reason = uint8(SlashReason.ExcludedByDisputes);
            else continue;
            Oracle storage oracle = oracles[seated[i]];
            uint256 stake = oracle.stake;
            uint256 amount = (stake * bps) / ConsensusLib.BASIS_POINTS;
            if (amount == 0) continue;
            oracle.stake = uint128(stake - amount);
            total += amount;
            emit Slashed(requestId, seated[i], amount, reason);
        }
        if (total > 0) slashedTotal += uint128(total);
    }

    function _payCluster(Request storage request, address[] memory seated, uint256 clusterMask, uint256 members)
        private
        returns (uint256 reward)
    {
        uint256 fee = request.fee;
        reward = fee / request.quorum;
        for (uint256 i = 0; i < seated.length; ++i) {
            if (clusterMask & (1 << i) != 0) _pay(seated[i], reward);
        }
        _pay(request.requester, fee - reward * members);
    }

    /// @dev calls the consumer with the gas it asked for; the finalizer gets the prepayment either way
    function _deliver(uint256 requestId, Request storage request, string calldata output, string memory model)
        private
        returns (bool delivered)
    {
        if (!request.hasCallback) return false;
        address callback = request.callback;
        uint256 gasLimit = request.callbackGasLimit;
        // EIP-150 forwards at most 63/64 of what is left; make sure the consumer gets all it asked for
        uint256 required = (gasLimit * 64) / 63 + CALLBACK_RESERVE;
        if (gasleft() < required) revert InsufficientGasForCallback(gasleft(), required);
        bytes memory payload = abi.encodeCall(IInferenceConsumer.onInferenceResult, (requestId, output, model));
        assembly ("memory-safe") {
            // no return data is copied, so a consumer cannot make finalize pay for a huge revert
            delivered := call(gasLimit, callback, 0, add(payload, 32), mload(payload), 0, 0)
        }
        _pay(msg.sender, gasLimit * request.callbackGasPrice);
    }

    /// @dev refunds the fee and the callback prepayment to the requester
    function _fail(uint256 requestId, Request storage request, FailureReason reason) private {
        request.status = Status.Failed;
        emit InferenceFailed(requestId, reason);
        uint256 prepay = request.hasCallback ? uint256(request.callbackGasLimit) * request.callbackGasPrice : 0;
        _pay(request.requester, request.fee + prepay);
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
