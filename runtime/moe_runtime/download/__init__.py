"""`--model s3://...`: download a checkpoint from S3-compatible storage into a verified local snapshot."""
