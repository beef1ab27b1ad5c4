"""TensorFlow's on-disk formats: file naming, CRC32C, protos, leveldb tables, the V2 bundle index and the ``checkpoint`` state file."""
