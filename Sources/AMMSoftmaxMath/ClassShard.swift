/// A contiguous shard of the classes, [start, start + count) of `total`: what one rank owns
/// when the classes are split over ranks (docs/FORMULATION.md, "Sharding by class").
public struct ClassShard: Sendable, Equatable {
    /// The first class of the shard, a global class id.
    public let start: Int
    /// The number of classes in the shard (may be 0, when there are more ranks than classes).
    public let count: Int
    /// The number of classes over every shard.
    public let total: Int

    public init(start: Int, count: Int, total: Int) {
        self.start = start
        self.count = count
        self.total = total
    }

    /// PartialFC's split: shard `rank` of `size` holds total / size classes, plus one for the
    /// first total % size ranks.
    public static func partialFC(total: Int, rank: Int, size: Int) -> ClassShard {
        let base = total / size, extra = total % size
        return ClassShard(start: rank * base + Swift.min(rank, extra),
                          count: base + (rank < extra ? 1 : 0), total: total)
    }

    /// Whether global class `label` is in this shard; its column in the shard is
    /// `label - start`.
    @inlinable
    public func contains(_ label: Int64) -> Bool {
        label >= Int64(start) && label < Int64(start) + Int64(count)
    }

    /// Checks total >= 1, count >= 0 and 0 <= start <= total - count.
    public func validate() throws(LossError) {
        guard total >= 1 else {
            throw .shape("c_total = \(total) is invalid: must be >= 1")
        }
        guard count >= 0 else {
            throw .shape("c_local = \(count) is invalid: must be >= 0")
        }
        guard count <= total else {
            throw .shape("c_local = \(count) is invalid: must be <= c_total (\(total))")
        }
        guard start >= 0, start <= total - count else {
            throw .shape("class_start = \(start) is invalid: must be in [0, \(total - count)] "
                + "so that the shard [class_start, class_start + c_local) lies in "
                + "[0, c_total = \(total))")
        }
    }
}
