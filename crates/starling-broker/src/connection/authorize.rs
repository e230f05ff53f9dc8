//! Authorization that asks another system. A client whose grant has rules
//! that fetch their answers (an HTTP `acl-url`, see
//! [`crate::auth::ClientRules::prepare`]) has them fetched before a PUBLISH
//! or SUBSCRIBE of its is handled: the driver holds the packet and reads
//! nothing else from that client until the answers are in, then the machine
//! checks them from memory as it checks any other rule. Other clients are
//! not affected; their connections run on their own tasks.

use starling_codec::Packet;

use super::client::Client;
use crate::auth::{Access, Check, PrepareFuture};
use crate::broker::split_share;

/// The fetch a packet needs before it can be handled, if any.
pub(super) fn prepare(client: &Client, packet: &Packet) -> Option<PrepareFuture> {
    let grant = client.grant.as_ref().filter(|g| !g.superuser)?;
    let rules = grant.rules.as_ref()?;
    let mount = client.mountpoint.as_deref();
    match packet {
        Packet::Publish(p) => {
            // The topic as the machine will check it: an alias resolved, the
            // mountpoint added. An unknown alias is the machine's error to report.
            let topic = match p.properties.topic_alias.filter(|_| p.topic.is_empty()) {
                Some(alias) => client
                    .aliases
                    .as_ref()?
                    .inbound
                    .get(usize::from(alias).checked_sub(1)?)?
                    .clone()?,
                None => p.topic.clone(),
            };
            let topic = match mount {
                Some(m) => super::mount::topic(m, &topic),
                None => topic,
            };
            rules.prepare(&Check {
                topic: &topic,
                access: Access::Write,
                qos: p.qos,
                retain: p.retain,
            })
        }
        Packet::Subscribe(s) => {
            let waits: Vec<PrepareFuture> = s
                .subscriptions
                .iter()
                .filter_map(|sub| {
                    let filter = super::mount::filter_for(mount, &sub.filter);
                    let (_, inner) = split_share(&filter);
                    rules.prepare(&Check {
                        topic: inner,
                        access: Access::Read,
                        qos: sub.options.qos,
                        retain: false,
                    })
                })
                .collect();
            (!waits.is_empty()).then(|| -> PrepareFuture {
                Box::pin(async move {
                    futures_util::future::join_all(waits).await;
                })
            })
        }
        _ => None,
    }
}
