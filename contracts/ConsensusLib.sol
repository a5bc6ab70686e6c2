// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice The consensus arithmetic of the oracle, shared bit for bit with `oracle/consensus`.
/// @dev Reveals are sign-bit embeddings of equal length. Two reveals are neighbours when
///      `popcount(a ^ b) * 10000 <= secDistance * dimBits`. The winner is the eligible reveal
///      with the most neighbours (itself included), ties going to the earliest seat; consensus
///      holds when that count reaches `ceil(secPercentage * quorum / 10000)`.
library ConsensusLib {
    struct Result {
        bool reached;
        uint256 winner;
        uint256 support;
        uint256 need;
        uint256 clusterMask;
    }

    error EmbeddingLengthMismatch(uint256 index, uint256 length, uint256 expected);
    error TooManyReveals(uint256 count);

    uint256 internal constant BASIS_POINTS = 10_000;

    /// @param bits one embedding per seat, in seat order
    /// @param eligibleMask bit i set when seat i takes part (revealed and not excluded)
    function cluster(
        bytes[] calldata bits,
        uint256 eligibleMask,
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
        for (uint256 i = 0; i < count; ++i) {
            if (eligibleMask & (1 << i) == 0) continue;
            neighbours[i] |= 1 << i;
            for (uint256 j = i + 1; j < count; ++j) {
                if (eligibleMask & (1 << j) == 0) continue;
                if (distance(bits[i], bits[j]) * BASIS_POINTS <= limit) {
                    neighbours[i] |= 1 << j;
                    neighbours[j] |= 1 << i;
                }
            }
        }
        for (uint256 i = 0; i < count; ++i) {
            uint256 support = popcount(neighbours[i]);
            if (support > result.support) {
                result.support = support;
                result.winner = i;
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

    /// @notice True when `disputes` other revealers out of `revealers` reject a reveal.
    function excludedByDisputes(uint256 disputes, uint256 revealers) internal pure returns (bool) {
        return revealers > 0 && disputes * 2 > revealers - 1;
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

    function _commonLength(bytes[] calldata bits, uint256 eligibleMask) private pure returns (uint256 length) {
        bool seen;
        for (uint256 i = 0; i < bits.length; ++i) {
            if (eligibleMask & (1 << i) == 0) continue;
            if (!seen) {
                length = bits[i].length;
                seen = true;
            } else if (bits[i].length != length) {
                revert EmbeddingLengthMismatch(i, bits[i].length, length);
            }
        }
    }
}
