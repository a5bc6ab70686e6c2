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
        uint256 byteLength = _commonLength(bits, eligibleMask);
        uint256 limit = secDistance * byteLength * 8;
        uint256[] memory neighbours = new uint256[](count);
        uint256[] memory distanceSums = new uint256[](count);
        for (uint256 i = 0; i < count; ++i) {
            if (eligibleMask & (1 << i) == 0) continue;
            neighbours[i] |= 1 << i;
            for (uint256 j = i + 1; j < count; ++j) {
                if (eligibleMask & (1 << j) == 0) continue;
                uint256 d = distance(bits[i], bits[j]);
                if (d * BASIS_POINTS <= limit) {
                    neighbours[i] |= 1 << j;
                    neighbours[j] |= 1 << i;
                    distanceSums[i] += d;
                    distanceSums[j] += d;
                }
            }
        }
        uint256 bestSum;
        for (uint256 i = 0; i < count; ++i) {
            if (eligibleMask & (1 << i) == 0) continue;
            uint256 support = popcount(neighbours[i]);
            // ascending seats with strict comparisons: a full tie stays with the lower seat
            if (
                support > result.support
                    || (
                        support == result.support
                            && (
                                distanceSums[i] < bestSum
                                    || (distanceSums[i] == bestSum && tickets[i] < tickets[result.winner])
                            )
                    )
            ) {
                result.support = support;
                result.winner = i;
                bestSum = distanceSums[i];
            }
        }
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
        assembly ("memory-safe") {
            for { let bit := shl(63, 1) } bit { bit := shr(1, bit) } {
                y := shr(64, mul(y, y))
                // y < 2**66 here, so y >> 65 is 1 exactly when y >= 2
                let carry := shr(65, y)
                y := shr(carry, y)
                result := add(result, mul(bit, carry))
            }
        }
    }

    /// @notice Hamming distance of two equal-length byte strings.
    function distance(bytes calldata a, bytes calldata b) internal pure returns (uint256 d) {
        uint256 length = a.length;
        for (uint256 offset = 0; offset < length; offset += 32) {
            uint256 x;
            assembly ("memory-safe") {
                x := xor(calldataload(add(a.offset, offset)), calldataload(add(b.offset, offset)))
            }
            uint256 remaining = length - offset;
            if (remaining < 32) {
                // calldataload reads past the end of `a`; keep only its own high-order bytes
                x &= ~(type(uint256).max >> (remaining * 8));
            }
            d += popcount(x);
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

    function _mostSignificantBit(uint256 x) private pure returns (uint256 n) {
        if (x >> 64 != 0) {
            x >>= 64;
            n += 64;
        }
        if (x >> 32 != 0) {
            x >>= 32;
            n += 32;
        }
        if (x >> 16 != 0) {
            x >>= 16;
            n += 16;
        }
        if (x >> 8 != 0) {
            x >>= 8;
            n += 8;
        }
        if (x >> 4 != 0) {
            x >>= 4;
            n += 4;
        }
        if (x >> 2 != 0) {
            x >>= 2;
            n += 2;
        }
        if (x >> 1 != 0) n += 1;
    }

    /// @dev the length every eligible reveal shares; an empty first one reverts, as in Python
    function _commonLength(bytes[] calldata bits, uint256 eligibleMask) private pure returns (uint256 length) {
        bool seen;
        for (uint256 i = 0; i < bits.length; ++i) {
            if (eligibleMask & (1 << i) == 0) continue;
            if (!seen) {
                length = bits[i].length;
                if (length == 0) revert EmptyEmbedding(i);
                seen = true;
            } else if (bits[i].length != length) {
                revert EmbeddingLengthMismatch(i, bits[i].length, length);
            }
        }
    }
}
