// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice The consensus arithmetic of the oracle, shared bit for bit with `oracle/consensus`.
/// @dev Reveals are sign-bit embeddings of equal length. Two reveals are neighbours when
///      `popcount(a ^ b) * 10000 <= secDistance * dimBits`. Among the eligible reveals with the
///      most neighbours (itself included) the winner is the medoid: the smallest sum of distances
///      to its neighbours, then the smaller ticket, then the lower seat. Consensus holds when its
///      neighbour count reaches `ceil(secPercentage * quorum / 10000)`.
///      Tickets order the seats: an exponential clock of rate `stake` drawn from
///      `keccak256(seed, requestId, node)`; the smallest tickets hold the seats.
library ConsensusLib {
    struct Result {
        bool reached;
        uint256 winner;
        uint256 support;
        uint256 need;
        uint256 clusterMask;
    }

    error EmbeddingLengthMismatch(uint256 index, uint256 length, uint256 expected);
    error EmptyEmbedding(uint256 index);
    error TooManyReveals(uint256 count);
    error TicketCountMismatch(uint256 tickets, uint256 reveals);
    error ZeroStake();

    uint256 internal constant BASIS_POINTS = 10_000;

    /// @param bits one embedding per seat, in seat order
    /// @param eligibleMask bit i set when seat i takes part (revealed and not excluded)
    /// @param tickets one ticket per seat, in seat order (the medoid's tie-break)
    function cluster(
        bytes[] calldata bits,
        uint256 eligibleMask,
        uint256[] memory tickets,
        uint256 quorum,
        uint256 secDistance,
        uint256 secPercentage
    ) internal pure returns (Result memory result) {
        uint256 count = bits.length;
        if (count > 256) revert TooManyReveals(count);
        result.need = requiredSupport(secPercentage, quorum);
        (uint256 byteLength, uint256[] memory offsets) = _eligibleOffsets(bits, eligibleMask);
        uint256 limit = secDistance * byteLength * 8;
        if (tickets.length != count) revert TicketCountMismatch(tickets.length, count);
        uint256[] memory neighbours = new uint256[](count);
        uint256[] memory distanceSums = new uint256[](count);
        uint256 supportBest;
        uint256 winnerSeat;
        // every eligible pair once: neighbour bits both ways and, for neighbours, the distance
        // added to both sums (in assembly: memory arrays indexed in Solidity cost 3x as much)
        assembly ("memory-safe") {
            function hamming(a, b, length) -> d {
                for { let offset := 0 } lt(offset, length) { offset := add(offset, 32) } {
                    let x := xor(calldataload(add(a, offset)), calldataload(add(b, offset)))
                    let remaining := sub(length, offset)
                    if lt(remaining, 32) {
                        // calldataload reads past the end of the reveal; keep only its own bytes
                        x := and(x, not(shr(mul(remaining, 8), not(0))))
                    }
                    d := add(d, popcount256(x))
                }
            }
            function popcount256(v) -> c {
                v := sub(v, and(shr(1, v), 0x5555555555555555555555555555555555555555555555555555555555555555))
                v := add(
                    and(v, 0x3333333333333333333333333333333333333333333333333333333333333333),
                    and(shr(2, v), 0x3333333333333333333333333333333333333333333333333333333333333333)
                )
                v := and(add(v, shr(4, v)), 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f)
                v := and(add(v, shr(8, v)), 0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff)
                c := shr(240, mul(v, 0x0001000100010001000100010001000100010001000100010001000100010001))
            }
            let neighbourAt := add(neighbours, 32)
            let sumAt := add(distanceSums, 32)
            let offsetAt := add(offsets, 32)
            for { let i := 0 } lt(i, count) { i := add(i, 1) } {
                if and(shr(i, eligibleMask), 1) {
                    let offsetI := mload(add(offsetAt, shl(5, i)))
                    let neighboursI := or(mload(add(neighbourAt, shl(5, i))), shl(i, 1))
                    let sumI := mload(add(sumAt, shl(5, i)))
                    for { let j := add(i, 1) } lt(j, count) { j := add(j, 1) } {
                        if and(shr(j, eligibleMask), 1) {
                            let d := hamming(offsetI, mload(add(offsetAt, shl(5, j))), byteLength)
                            if iszero(gt(mul(d, BASIS_POINTS), limit)) {
                                neighboursI := or(neighboursI, shl(j, 1))
                                let slotJ := add(neighbourAt, shl(5, j))
                                mstore(slotJ, or(mload(slotJ), shl(i, 1)))
                                sumI := add(sumI, d)
                                slotJ := add(sumAt, shl(5, j))
                                mstore(slotJ, add(mload(slotJ), d))
                            }
                        }
                    }
                    mstore(add(neighbourAt, shl(5, i)), neighboursI)
                    mstore(add(sumAt, shl(5, i)), sumI)
                }
            }
            // the winner: most neighbours, then the smallest distance sum, then the smallest
            // ticket; seats in ascending order with strict comparisons, so a full tie stays
            // with the lower seat
            let ticketAt := add(tickets, 32)
            let bestSum := 0
            let bestTicket := 0
            for { let i := 0 } lt(i, count) { i := add(i, 1) } {
                if and(shr(i, eligibleMask), 1) {
                    let support := popcount256(mload(add(neighbourAt, shl(5, i))))
                    let sum := mload(add(sumAt, shl(5, i)))
                    let ticket_ := mload(add(ticketAt, shl(5, i)))
                    if or(
                        gt(support, supportBest),
                        and(eq(support, supportBest), or(lt(sum, bestSum), and(eq(sum, bestSum), lt(ticket_, bestTicket))))
                    ) {
                        supportBest := support
                        bestSum := sum
                        bestTicket := ticket_
                        winnerSeat := i
                    }
                }
            }
        }
        result.support = supportBest;
        result.winner = winnerSeat;
        if (result.support > 0) {
            result.clusterMask = neighbours[result.winner];
            result.reached = result.support >= result.need;
        }
    }

    function requiredSupport(uint256 secPercentage, uint256 quorum) internal pure returns (uint256) {
        return (secPercentage * quorum + BASIS_POINTS - 1) / BASIS_POINTS;
    }

    /// @notice True when `disputes` revealers reject a reveal: a strict majority of the quorum.
    function excludedByDisputes(uint256 disputes, uint256 quorum) internal pure returns (bool) {
        return disputes * 2 > quorum;
    }

    /// @notice A node's ticket for a request; smaller is better.
    /// @dev `-log2(u) * 2**64 * 2**64 / stake` with `u = ((h >> 192) + 1) / 2**64`, `h` the
    ///      keccak of (seed, requestId, node): the key of an exponential clock of rate `stake`.
    function ticket(uint256 seed, uint256 requestId, address node, uint256 stake) internal pure returns (uint256) {
        if (stake == 0) revert ZeroStake();
        uint256 h = uint256(keccak256(abi.encode(seed, requestId, node)));
        uint256 negLog = (uint256(64) << 64) - log2Fixed64((h >> 192) + 1);
        return (negLog << 64) / stake;
    }

    /// @notice floor(log2(x) * 2**64) for 1 <= x <= 2**64, bit by bit (64 squarings).
    function log2Fixed64(uint256 x) internal pure returns (uint256 result) {
        uint256 n = _mostSignificantBit(x);
        result = n << 64;
        uint256 y = (x << 64) >> n; // 64.64 fixed point in [1, 2)
        // 64 rounds, one fraction bit each from the top: square y; when y >= 2 (y < 4 always, so
        // y >> 65 is that bit) halve it and set the bit. Eight rounds a pass, to save jumps.
        assembly ("memory-safe") {
            let c := 0
            for { let k := 56 } 1 { k := sub(k, 8) } {
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 7), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 6), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 5), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 4), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 3), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 2), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 1), c))
                y := shr(64, mul(y, y))
                c := shr(65, y)
                y := shr(c, y)
                result := or(result, shl(add(k, 0), c))
                if iszero(k) { break }
            }
        }
    }

    function popcount(uint256 x) internal pure returns (uint256) {
        unchecked {
            x = x - ((x >> 1) & 0x5555555555555555555555555555555555555555555555555555555555555555);
            x = (x & 0x3333333333333333333333333333333333333333333333333333333333333333)
                + ((x >> 2) & 0x3333333333333333333333333333333333333333333333333333333333333333);
            x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;
            // 16-bit lanes, so that a full word (256) cannot overflow the final lane
            x = (x + (x >> 8)) & 0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff;
            return (x * 0x0001000100010001000100010001000100010001000100010001000100010001) >> 240;
        }
    }

    /// @dev floor(log2(x)) for 1 <= x <= 2**64, by halving the range (branch-free)
    function _mostSignificantBit(uint256 x) private pure returns (uint256 n) {
        assembly ("memory-safe") {
            let step := shl(6, gt(x, 0xffffffffffffffff))
            x := shr(step, x)
            n := step
            step := shl(5, gt(x, 0xffffffff))
            x := shr(step, x)
            n := or(n, step)
            step := shl(4, gt(x, 0xffff))
            x := shr(step, x)
            n := or(n, step)
            step := shl(3, gt(x, 0xff))
            x := shr(step, x)
            n := or(n, step)
            step := shl(2, gt(x, 0xf))
            x := shr(step, x)
            n := or(n, step)
            step := shl(1, gt(x, 0x3))
            x := shr(step, x)
            n := or(n, step)
            n := or(n, gt(x, 0x1))
        }
    }

    /// @dev where each eligible reveal's bytes start in calldata, and the length they all share;
    ///      an empty first one reverts, as in Python
    function _eligibleOffsets(bytes[] calldata bits, uint256 eligibleMask)
        private
        pure
        returns (uint256 length, uint256[] memory offsets)
    {
        offsets = new uint256[](bits.length);
        bool seen;
        for (uint256 i = 0; i < bits.length; ++i) {
            if (eligibleMask & (1 << i) == 0) continue;
            bytes calldata reveal = bits[i];
            if (!seen) {
                length = reveal.length;
                if (length == 0) revert EmptyEmbedding(i);
                seen = true;
            } else if (reveal.length != length) {
                revert EmbeddingLengthMismatch(i, reveal.length, length);
            }
            offsets[i] = _offset(reveal);
        }
    }

    function _offset(bytes calldata data) private pure returns (uint256 offset) {
        assembly ("memory-safe") {
            offset := data.offset
        }
    }
}
