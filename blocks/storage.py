"""Where the feature store lives, as a Prefect block: a root URI and, for S3, credentials."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from loopline.storage import S3Credentials, Storage


class FeatureStoreStorage(Block):
    """The feature store's root (a local folder or ``s3://bucket/prefix``) and its credentials.

    Save one with ``FeatureStoreStorage(root_uri="s3://ml/features", ...).save("features")``
    and pass ``storage_block="features"`` to the flows.
    """

    _block_type_name = "loopline feature store"
    _description = "Root URI and S3 credentials of a loopline feature store."

    root_uri: str = Field(description="A local folder or s3://bucket/prefix.")
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO...).")
    region: str = Field(default="us-east-1", description="The S3 region.")
    access_key_id: str | None = Field(default=None, description="S3 access key id.")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")

    def credentials(self) -> S3Credentials | None:
        """The S3 credentials, when both keys are set."""
        if self.access_key_id and self.secret_access_key:
            return S3Credentials(self.access_key_id, self.secret_access_key,
                                 self.endpoint_url, self.region)
        return None

    def storage(self) -> Storage:
        """The storage this block describes.

        Raises:
            MissingCredentials: the root is on S3 and no credentials are set here or in the
                environment.
        """
        return Storage(self.root_uri, self.credentials())
