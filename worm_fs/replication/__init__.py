"""Replication of a primary's store to an S3 bucket with Object Lock.

* :mod:`.s3` -- the bucket (the only module importing ``boto3``)
* :mod:`.tiles` -- the audit log as C2SP tlog-tiles
* :mod:`.uploader` -- the durable upload queue, drained off the FUSE path
* :mod:`.bucket_verify` -- ``worm-fs verify --bucket``: the bucket checked on its own
"""
