//! `authgate.v1.WebhookService`: a tenant's webhooks, for admin callers. Secrets are
//! write-only: no response carries one.

use super::convert::timestamp;
use crate::proto::v1 as pb;
use crate::webhooks::{NewWebhook, WebhookView, Webhooks};
use authgate_plugin_sdk::Secret;
use tonic::{Request, Response, Status};

pub struct GrpcWebhookService {
    webhooks: Webhooks,
}

impl GrpcWebhookService {
    pub fn new(webhooks: Webhooks) -> Self {
        Self { webhooks }
    }
}

fn view_to_pb(v: WebhookView) -> pb::Webhook {
    pb::Webhook {
        tenant: v.tenant,
        webhook_id: v.id,
        url: v.url,
        events: v.events,
        source: v.source.as_str().to_owned(),
        created_at: Some(timestamp(v.created_at_ms)),
        updated_at: Some(timestamp(v.updated_at_ms)),
    }
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for GrpcWebhookService {
    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::Webhook>, Status> {
        let r = request.into_inner();
        let new = NewWebhook {
            tenant: r.tenant,
            id: r.webhook_id,
            url: r.url,
            events: r.events,
            secret: Secret::from(r.secret),
        };
        Ok(Response::new(view_to_pb(self.webhooks.create(new).await?)))
    }

    async fn list_webhooks(
        &self,
        request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let r = request.into_inner();
        let webhooks = self.webhooks.list(&r.tenant).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: webhooks.into_iter().map(view_to_pb).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let r = request.into_inner();
        let deleted = self.webhooks.delete(&r.tenant, &r.webhook_id).await?;
        Ok(Response::new(pb::DeleteWebhookResponse { deleted }))
    }
}
