"""The archive: compacted events in sealed, checksummed segments in an object store
(a local directory or S3-compatible), the archiver that compacts behind snapshots,
and the readers that cross the compaction horizon."""
