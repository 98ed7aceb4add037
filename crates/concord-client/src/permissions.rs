//! A model's permissions from the client: read and change its grants, create a model with
//! them. The server checks `manage` on every call; none of them is queued while offline.

use concord_protocol::{
    ClientRequest, CollectionId, CreationNonce, ModelId, PermissionGrants, ServerResponse,
};

use crate::domain::ModelService;
use crate::driver::{BuildRequest, Command, document, random_u64};
use crate::error::ClientError;

impl ModelService {
    /// The model's own grants (world and per user). Needs `manage` on the model and a
    /// connection: offline it fails at once with [`ClientError::Offline`].
    pub async fn permissions(&self, id: &ModelId) -> Result<PermissionGrants, ClientError> {
        let model = id.clone();
        match self.request(Box::new(|_| Ok(ClientRequest::GetPermissions { model }))).await? {
            ServerResponse::Permissions { grants, .. } => Ok(grants),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces the model's grants. Needs `manage` and a connection (offline: at once
    /// [`ClientError::Offline`]; nothing is queued). Sessions whose permissions change hear
    /// [`ModelEvent::PermissionsChanged`](crate::ModelEvent::PermissionsChanged); those
    /// that lose `read` are closed from the model ([`ModelEvent::Gone`](crate::ModelEvent::Gone)).
    pub async fn set_permissions(
        &self,
        id: &ModelId,
        grants: &PermissionGrants,
    ) -> Result<(), ClientError> {
        let (model, grants) = (id.clone(), grants.clone());
        match self
            .request(Box::new(|_| Ok(ClientRequest::SetPermissions { model, grants })))
            .await?
        {
            ServerResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a model at the server with these grants (its creator keeps every
    /// permission). Unlike [`ModelService::create`] it needs a connection — offline it
    /// fails at once with [`ClientError::Offline`] — and nothing of it is stored here until
    /// the model is opened. Returns the model's version (0).
    pub async fn create_with_permissions(
        &self,
        id: &ModelId,
        collection: &CollectionId,
        data: serde_json::Value,
        grants: &PermissionGrants,
    ) -> Result<u64, ClientError> {
        let (model, collection, grants) = (id.clone(), collection.clone(), grants.clone());
        let build: BuildRequest = Box::new(move |replica| {
            let data = document(&data, replica)?;
            let nonce =
                CreationNonce(random_u64().to_le_bytes().repeat(2).try_into().unwrap_or([0; 16]));
            Ok(ClientRequest::CreateModel {
                model,
                collection,
                data,
                nonce,
                permissions: Some(grants),
            })
        });
        match self.request(build).await? {
            ServerResponse::ModelCreated { version, .. } => Ok(version),
            other => Err(unexpected(&other)),
        }
    }

    async fn request(&self, request: BuildRequest) -> Result<ServerResponse, ClientError> {
        self.domain.call(|reply| Command::Call { request, reply }).await
    }
}

pub(crate) fn unexpected(response: &ServerResponse) -> ClientError {
    ClientError::Server(concord_protocol::ErrorReply::new(
        concord_protocol::ErrorCode::UNEXPECTED_MESSAGE,
        format!("unexpected answer {response:?}"),
    ))
}
