//! DIMSE service user: C-ECHO, C-FIND (study and series level, `find`), C-GET and C-MOVE into
//! the study cache (`retrieve`), and C-STORE of files — our Structured Reports — to the archive
//! (`store`). This file opens associations and holds what the operations share.

mod find;
mod retrieve;
mod store;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::association::client::ClientAssociationOptions;

use super::dimse::{self, command, field, status_kind, uid, Link, Session, StatusKind};
use super::node::{Node, NodeSpec};
use super::{Limits, PacsError};

pub use find::{find, record_of, record_value, LIST_KEYWORDS};
pub use retrieve::{get, move_to_self};
pub use store::store;

/// How long a peer may stay silent before an operation gives up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A `dicom-ul` error with its causes, for people.
pub fn describe_ul_error(e: &dicom_ul::association::Error) -> String {
    use dicom_ul::association::Error as E;
    if let E::Rejected { association_rj, .. } = e {
        return format!("rejected: {}", association_rj.source);
    }
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Open an association proposing `contexts` (abstract syntax, transfer syntaxes), asking for
/// the SCP role for the SOP classes in `scp_roles` (C-GET).
pub fn connect(
    node: &Node,
    contexts: &[(&str, Vec<&str>)],
    scp_roles: &[&str],
    limits: Limits,
) -> Result<Box<dyn Session>, PacsError> {
    let NodeSpec::Dimse {
        ae_title,
        host,
        port,
    } = node.validate()?
    else {
        return Err(PacsError::Invalid(format!(
            "{} is a DICOMweb node; this needs a DIMSE node (AET@HOST:PORT)",
            node.address
        )));
    };
    let name = node.address.clone();
    let mut opts = ClientAssociationOptions::new()
        .calling_ae_title(node.our_ae_title.clone())
        .called_ae_title(ae_title)
        .max_pdu_length(65_536)
        .connection_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .write_timeout(READ_TIMEOUT);
    for (abs, tss) in contexts {
        opts = opts.with_presentation_context(
            abs.to_string(),
            tss.iter().map(|t| t.to_string()).collect(),
        );
    }
    for c in scp_roles {
        opts = opts.with_role_selection(c.to_string(), false, true);
    }
    let addr = (host.as_str(), port);
    let fail = |e: dicom_ul::association::Error| {
        use dicom_ul::association::Error as E;
        match &e {
            E::Rejected { association_rj, .. } => PacsError::Refused {
                node: name.clone(),
                reason: association_rj.source.to_string(),
            },
            E::Connect { .. } | E::ToAddress { .. } => PacsError::Connect {
                node: name.clone(),
                reason: describe_ul_error(&e),
            },
            E::NoAcceptedPresentationContexts { .. } => PacsError::NoContext {
                node: name.clone(),
                what: {
                    let mut classes: Vec<&str> = contexts.iter().map(|c| c.0).collect();
                    classes.dedup();
                    classes.join(", ")
                },
            },
            _ => PacsError::Association {
                node: name.clone(),
                reason: describe_ul_error(&e),
            },
        }
    };
    if node.tls {
        let cfg = super::tls::client_config(node.ca_file.as_deref())?;
        let a = opts
            .tls_config(cfg)
            .server_name(&host)
            .establish_tls(addr)
            .map_err(fail)?;
        Ok(Box::new(Link::new(a, name, limits)))
    } else {
        let a = opts.establish(addr).map_err(fail)?;
        Ok(Box::new(Link::<_, TcpStream>::new(a, name, limits)))
    }
}

fn plain_ts() -> Vec<&'static str> {
    dimse::NATIVE_TS.to_vec()
}

fn need_context(session: &dyn Session, abs: &str, what: &str) -> Result<(u8, String), PacsError> {
    session
        .context_for(abs, &|ts| ts == "1.2.840.10008.1.2.1")
        .ok_or_else(|| PacsError::NoContext {
            node: session.node().to_string(),
            what: what.to_string(),
        })
}

/// C-ECHO: whether the node answers, and how long the round trip took.
pub fn echo(node: &Node) -> Result<Duration, PacsError> {
    let t0 = Instant::now();
    let (mut s, pc, _) = open(node, dimse::VERIFICATION, "verification", Limits::default())?;
    let rq = command(
        field::C_ECHO_RQ,
        tags::MESSAGE_ID,
        1,
        false,
        [uid(tags::AFFECTED_SOP_CLASS_UID, dimse::VERIFICATION)],
    );
    s.send(pc, &rq, None)?;
    let rsp = s.expect_message()?;
    let status = rsp.status();
    s.release()?;
    if status_kind(status) != StatusKind::Success {
        return Err(PacsError::Status {
            operation: "C-ECHO",
            status,
            comment: rsp.comment(),
        });
    }
    Ok(t0.elapsed())
}

/// Open an association with one presentation context (native syntaxes) for `abstract_syntax`
/// and return it with the accepted context's id and transfer syntax.
fn open(
    node: &Node,
    abstract_syntax: &str,
    what: &str,
    limits: Limits,
) -> Result<(Box<dyn Session>, u8, String), PacsError> {
    let s = connect(node, &[(abstract_syntax, plain_ts())], &[], limits)?;
    let (pc, ts) = need_context(s.as_ref(), abstract_syntax, what)?;
    Ok((s, pc, ts))
}

fn str_el(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    if v.is_empty() {
        DataElement::new(tag, vr, PrimitiveValue::Empty)
    } else {
        DataElement::new(tag, vr, PrimitiveValue::from(v))
    }
}

fn send_cancel(s: &mut dyn Session, pc: u8, message_id: u16) -> Result<(), PacsError> {
    let rq = command(
        field::C_CANCEL_RQ,
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        message_id,
        false,
        [],
    );
    s.send(pc, &rq, None)
}
