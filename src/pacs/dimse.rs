//! DIMSE messages over a `dicom-ul` association: command sets (implicit VR little endian, with
//! their group length), data sets fragmented by `dicom-ul`'s P-DATA writer, and a receiver that
//! reassembles messages from P-DATA values while enforcing the size limits.

use std::collections::VecDeque;
use std::io::Write;
use std::marker::PhantomData;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::{CloseSocket, SyncAssociation};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

use super::{Limits, PacsError};

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Study Root Query/Retrieve Information Model – FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
/// Study Root Query/Retrieve Information Model – MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
/// Study Root Query/Retrieve Information Model – GET.
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
/// Comprehensive SR storage (our AI results).
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

/// Storage SOP classes we accept as a storage SCP and ask for in a C-GET: projection
/// radiography first, then the other image and document classes a chest study may hold.
pub const STORAGE_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.1",     // CR
    "1.2.840.10008.5.1.4.1.1.1.1",   // DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1", // DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",   // MG for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1", // MG for processing
    "1.2.840.10008.5.1.4.1.1.7",     // secondary capture
    "1.2.840.10008.5.1.4.1.1.7.2",   // multi-frame grayscale byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",   // multi-frame grayscale word SC
    "1.2.840.10008.5.1.4.1.1.7.4",   // multi-frame true colour SC
    "1.2.840.10008.5.1.4.1.1.2",     // CT
    "1.2.840.10008.5.1.4.1.1.4",     // MR
    "1.2.840.10008.5.1.4.1.1.6.1",   // US
    "1.2.840.10008.5.1.4.1.1.12.1",  // XA
    "1.2.840.10008.5.1.4.1.1.12.2",  // RF
    "1.2.840.10008.5.1.4.1.1.88.11", // basic text SR
    "1.2.840.10008.5.1.4.1.1.88.22", // enhanced SR
    COMPREHENSIVE_SR,
    "1.2.840.10008.5.1.4.1.1.88.59", // key object selection
    "1.2.840.10008.5.1.4.1.1.11.1",  // grayscale softcopy presentation state
    "1.2.840.10008.5.1.4.1.1.104.1", // encapsulated PDF
];

/// Storage classes a C-GET asks for when the archive does not list the study's classes: one
/// context per decodable transfer syntax each, within the 128 contexts of an association.
pub const GET_FALLBACK_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.1.2",
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    COMPREHENSIVE_SR,
    "1.2.840.10008.5.1.4.1.1.88.59",
];

/// Most storage classes one C-GET association asks for (each takes 12 contexts).
pub const GET_MAX_CLASSES: usize = 10;

/// Transfer syntaxes the viewer decodes, in order of preference (explicit VR little endian
/// first: every peer has it; implicit last: it loses the VRs).
pub const DECODABLE_TS: &[&str] = &[
    "1.2.840.10008.1.2.1",    // explicit VR little endian
    "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.70", // JPEG lossless SV1
    "1.2.840.10008.1.2.4.57", // JPEG lossless
    "1.2.840.10008.1.2.4.50", // JPEG baseline
    "1.2.840.10008.1.2.4.51", // JPEG extended
    "1.2.840.10008.1.2.5",    // RLE lossless
    "1.2.840.10008.1.2.1.99", // deflated explicit VR little endian
    "1.2.840.10008.1.2.2",    // explicit VR big endian (retired)
    "1.2.840.10008.1.2",      // implicit VR little endian
];

/// The uncompressed transfer syntaxes (a data set in one can be re-encoded into another).
pub const NATIVE_TS: &[&str] = &["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"];

/// DIMSE command fields.
pub mod field {
    /// C-STORE-RQ.
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-STORE-RSP.
    pub const C_STORE_RSP: u16 = 0x8001;
    /// C-GET-RQ.
    pub const C_GET_RQ: u16 = 0x0010;
    /// C-GET-RSP.
    pub const C_GET_RSP: u16 = 0x8010;
    /// C-FIND-RQ.
    pub const C_FIND_RQ: u16 = 0x0020;
    /// C-FIND-RSP.
    pub const C_FIND_RSP: u16 = 0x8020;
    /// C-MOVE-RQ.
    pub const C_MOVE_RQ: u16 = 0x0021;
    /// C-MOVE-RSP.
    pub const C_MOVE_RSP: u16 = 0x8021;
    /// C-ECHO-RQ.
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-ECHO-RSP.
    pub const C_ECHO_RSP: u16 = 0x8030;
    /// C-CANCEL-RQ.
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// CommandDataSetType value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// How a DIMSE status reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// 0x0000.
    Success,
    /// 0xFF00 / 0xFF01: more answers follow.
    Pending,
    /// 0xFE00.
    Cancelled,
    /// 0x0001, 0xBxxx.
    Warning,
    /// Anything else.
    Failure,
}

/// Classify a DIMSE status.
pub fn status_kind(status: u16) -> StatusKind {
    match status {
        0x0000 => StatusKind::Success,
        0xFF00 | 0xFF01 => StatusKind::Pending,
        0xFE00 => StatusKind::Cancelled,
        0x0001 | 0xB000..=0xBFFF => StatusKind::Warning,
        _ => StatusKind::Failure,
    }
}

/// The meaning of the common failure statuses (PS3.7 annex C, PS3.4 annex B/C).
pub fn status_text(status: u16) -> &'static str {
    match status {
        0x0000 => "success",
        0xFF00 | 0xFF01 => "pending",
        0xFE00 => "cancelled",
        0x0001 | 0xB000 => "completed with warnings or failed sub-operations",
        0xB007 => "data set does not match the SOP class (stored anyway)",
        0xB006 => "elements discarded",
        0x0110 => "processing failure",
        0x0122 => "SOP class not supported",
        0x0124 => "not authorised",
        0x0211 => "unrecognised operation",
        0xA700..=0xA7FF => "out of resources",
        0xA801 => "move destination unknown",
        0xA900..=0xA9FF => "data set does not match the SOP class",
        0xC000..=0xCFFF => "cannot understand",
        _ => "failure",
    }
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

/// A command set: `field`, message ID and the given elements.
pub fn command(
    field: u16,
    message_id_tag: Tag,
    message_id: u16,
    has_data: bool,
    rest: impl IntoIterator<Item = DataElement<InMemDicomObject>>,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter(rest);
    obj.put(el(tags::COMMAND_FIELD, VR::US, [field]));
    obj.put(el(message_id_tag, VR::US, [message_id]));
    obj.put(el(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        [if has_data { 0x0000u16 } else { NO_DATA_SET }],
    ));
    obj
}

/// A UI element.
pub fn uid(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    el(tag, VR::UI, v)
}

/// A US element.
pub fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    el(tag, VR::US, [v])
}

/// An AE element.
pub fn ae(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    el(tag, VR::AE, v)
}

/// A LO element.
pub fn lo(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    el(tag, VR::LO, v)
}

fn implicit_le() -> dicom_encoding::TransferSyntax {
    dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
}

/// Encode a command set with its CommandGroupLength.
pub fn encode_command(cmd: &InMemDicomObject) -> Result<Vec<u8>, PacsError> {
    let ts = implicit_le();
    let mut body = Vec::new();
    let mut without = cmd.clone();
    without.remove_element(tags::COMMAND_GROUP_LENGTH);
    without
        .write_dataset_with_ts(&mut body, &ts)
        .map_err(|e| PacsError::Invalid(format!("encoding a command: {e}")))?;
    let len = u32::try_from(body.len())
        .map_err(|_| PacsError::Invalid("command set too large".into()))?;
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encode an identifier (query keys) in a transfer syntax.
pub fn encode_dataset(obj: &InMemDicomObject, ts_uid: &str) -> Result<Vec<u8>, PacsError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| PacsError::Invalid(format!("unknown transfer syntax {ts_uid}")))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| PacsError::Invalid(format!("encoding a data set: {e}")))?;
    Ok(out)
}

/// Decode a data set received in transfer syntax `ts_uid`.
pub fn decode_dataset(bytes: &[u8], ts_uid: &str) -> Result<InMemDicomObject, PacsError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| PacsError::Rejected(format!("unknown transfer syntax {ts_uid}")))?;
    crate::dicom::object::guard("decoding a data set", || {
        InMemDicomObject::read_dataset_with_ts(bytes, ts)
            .map_err(|e| crate::dicom::DicomError::Parse(e.to_string()))
    })
    .map_err(|e| PacsError::Rejected(e.to_string()))
}

/// One DIMSE message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Presentation context it came on.
    pub pc_id: u8,
    /// The command set.
    pub command: InMemDicomObject,
    /// The data set, if one followed.
    pub data: Option<Vec<u8>>,
}

impl Message {
    /// An unsigned short of the command.
    pub fn u16(&self, tag: Tag) -> Option<u16> {
        self.command.element(tag).ok()?.to_int::<u16>().ok()
    }
    /// The command field.
    pub fn field(&self) -> u16 {
        self.u16(tags::COMMAND_FIELD).unwrap_or(0)
    }
    /// The status (responses).
    pub fn status(&self) -> u16 {
        self.u16(tags::STATUS).unwrap_or(0xC000)
    }
    /// A string of the command, trimmed.
    pub fn str(&self, tag: Tag) -> String {
        self.command
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    }
    /// The peer's error comment, if any.
    pub fn comment(&self) -> Option<String> {
        Some(self.str(tags::ERROR_COMMENT)).filter(|s| !s.is_empty())
    }
}

/// What the peer did next.
#[derive(Debug)]
pub enum Incoming {
    /// A whole message.
    Message(Message),
    /// The peer asked to release (we answered).
    Released,
    /// The peer aborted.
    Aborted,
}

/// A DIMSE channel over an established association.
pub struct Link<A, S> {
    /// The association.
    pub assoc: A,
    /// The peer, for messages.
    pub node: String,
    limits: Limits,
    received_total: u64,
    pending: VecDeque<PDataValue>,
    _stream: PhantomData<S>,
}

impl<A, S> Link<A, S>
where
    A: SyncAssociation<S>,
    S: std::io::Read + std::io::Write + CloseSocket,
{
    /// Wrap an association.
    pub fn new(assoc: A, node: impl Into<String>, limits: Limits) -> Self {
        Self {
            assoc,
            node: node.into(),
            limits,
            received_total: 0,
            pending: VecDeque::new(),
            _stream: PhantomData,
        }
    }

    fn broken(&self, reason: impl std::fmt::Display) -> PacsError {
        PacsError::Association {
            node: self.node.clone(),
            reason: reason.to_string(),
        }
    }

    /// Transfer syntax negotiated for a presentation context.
    pub fn ts_of(&self, pc_id: u8) -> Option<String> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id)
            .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string())
    }

    /// The accepted presentation context for an abstract syntax (the first, or the first
    /// whose transfer syntax satisfies `prefer`).
    pub fn context_for(
        &self,
        abstract_syntax: &str,
        prefer: &dyn Fn(&str) -> bool,
    ) -> Option<(u8, String)> {
        let accepted: Vec<_> = self
            .assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| {
                pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
            })
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
            .collect();
        accepted
            .iter()
            .find(|(_, ts)| prefer(ts))
            .or_else(|| accepted.first())
            .cloned()
    }

    /// Send a command (and its data set, when given).
    pub fn send(
        &mut self,
        pc_id: u8,
        cmd: &InMemDicomObject,
        data: Option<&[u8]>,
    ) -> Result<(), PacsError> {
        let bytes = encode_command(cmd)?;
        SyncAssociation::send(
            &mut self.assoc,
            &Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc_id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: bytes,
                }],
            },
        )
        .map_err(|e| self.broken(format!("sending a command: {e}")))?;
        if let Some(data) = data {
            let r = {
                let mut w = self.assoc.send_pdata(pc_id);
                w.write_all(data).and_then(|_| w.finish())
            };
            r.map_err(|e| self.broken(format!("sending a data set: {e}")))?;
        }
        Ok(())
    }

    /// Receive the next message (or release/abort), enforcing the size limits.
    pub fn receive(&mut self) -> Result<Incoming, PacsError> {
        let mut cmd_bytes: Vec<u8> = Vec::new();
        let mut command: Option<(u8, InMemDicomObject)> = None;
        let mut data: Vec<u8> = Vec::new();
        loop {
            let Some(pdv) = self.pending.pop_front() else {
                match SyncAssociation::receive(&mut self.assoc) {
                    Ok(Pdu::PData { data }) => {
                        self.pending.extend(data);
                        continue;
                    }
                    Ok(Pdu::ReleaseRQ) => {
                        if command.is_some() || !cmd_bytes.is_empty() {
                            return Err(self.broken("the peer released in the middle of a message"));
                        }
                        let _ = SyncAssociation::send(&mut self.assoc, &Pdu::ReleaseRP);
                        return Ok(Incoming::Released);
                    }
                    Ok(Pdu::AbortRQ { .. }) => return Ok(Incoming::Aborted),
                    Ok(other) => {
                        return Err(self.broken(format!("unexpected {}", other.short_description())))
                    }
                    Err(e) => return Err(self.broken(e)),
                }
            };
            match pdv.value_type {
                PDataValueType::Command => {
                    if command.is_some() {
                        return Err(self.broken("a command fragment arrived inside a data set"));
                    }
                    cmd_bytes.extend_from_slice(&pdv.data);
                    if cmd_bytes.len() > 1 << 20 {
                        return Err(self.broken("command set larger than 1 MiB"));
                    }
                    if pdv.is_last {
                        let obj = decode_dataset(&cmd_bytes, "1.2.840.10008.1.2")
                            .map_err(|e| self.broken(format!("malformed command: {e}")))?;
                        let has_data = obj
                            .element(tags::COMMAND_DATA_SET_TYPE)
                            .ok()
                            .and_then(|e| e.to_int::<u16>().ok())
                            .is_some_and(|v| v != NO_DATA_SET);
                        if !has_data {
                            return Ok(Incoming::Message(Message {
                                pc_id: pdv.presentation_context_id,
                                command: obj,
                                data: None,
                            }));
                        }
                        command = Some((pdv.presentation_context_id, obj));
                    }
                }
                PDataValueType::Data => {
                    let Some((pc_id, _)) = &command else {
                        return Err(self.broken("a data set arrived before its command"));
                    };
                    if *pc_id != pdv.presentation_context_id {
                        return Err(
                            self.broken("a data set arrived on another presentation context")
                        );
                    }
                    let n = pdv.data.len() as u64;
                    if data.len() as u64 + n > self.limits.max_instance_bytes {
                        return Err(PacsError::Rejected(format!(
                            "an instance larger than the limit of {} bytes",
                            self.limits.max_instance_bytes
                        )));
                    }
                    self.received_total += n;
                    if self.received_total > self.limits.max_association_bytes {
                        return Err(PacsError::Rejected(format!(
                            "the association sent more than the limit of {} bytes",
                            self.limits.max_association_bytes
                        )));
                    }
                    data.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        let (pc_id, command) =
                            command.take().ok_or_else(|| self.broken("lost command"))?;
                        return Ok(Incoming::Message(Message {
                            pc_id,
                            command,
                            data: Some(data),
                        }));
                    }
                }
            }
        }
    }

    /// Receive a message, treating release and abort as errors (for a requestor).
    pub fn expect_message(&mut self) -> Result<Message, PacsError> {
        match self.receive()? {
            Incoming::Message(m) => Ok(m),
            Incoming::Released => Err(self.broken("the peer released the association early")),
            Incoming::Aborted => Err(self.broken("the peer aborted the association")),
        }
    }

    /// Release the association gracefully (requestor side).
    pub fn release(self) -> Result<(), PacsError> {
        let node = self.node.clone();
        self.assoc.release().map_err(|e| PacsError::Association {
            node,
            reason: format!("release: {e}"),
        })
    }

    /// Abort the association.
    pub fn abort(self) {
        let _ = self.assoc.abort();
    }
}

/// A DIMSE channel whatever the stream under it (TCP or TLS), for the operations.
pub trait Session: Send {
    /// The peer, for messages.
    fn node(&self) -> &str;
    /// Transfer syntax of a presentation context.
    fn ts_of(&self, pc_id: u8) -> Option<String>;
    /// Accepted context for an abstract syntax, preferring a transfer syntax.
    fn context_for(
        &self,
        abstract_syntax: &str,
        prefer: &dyn Fn(&str) -> bool,
    ) -> Option<(u8, String)>;
    /// Send a command and optional data set.
    fn send(
        &mut self,
        pc_id: u8,
        cmd: &InMemDicomObject,
        data: Option<&[u8]>,
    ) -> Result<(), PacsError>;
    /// Receive the next message, release or abort.
    fn receive(&mut self) -> Result<Incoming, PacsError>;
    /// Receive a message; release and abort are errors.
    fn expect_message(&mut self) -> Result<Message, PacsError>;
    /// Release gracefully.
    fn release(self: Box<Self>) -> Result<(), PacsError>;
    /// Abort.
    fn abort(self: Box<Self>);
}

impl<A, S> Session for Link<A, S>
where
    A: SyncAssociation<S> + Send,
    S: std::io::Read + std::io::Write + CloseSocket + Send,
{
    fn node(&self) -> &str {
        &self.node
    }
    fn ts_of(&self, pc_id: u8) -> Option<String> {
        Link::ts_of(self, pc_id)
    }
    fn context_for(
        &self,
        abstract_syntax: &str,
        prefer: &dyn Fn(&str) -> bool,
    ) -> Option<(u8, String)> {
        Link::context_for(self, abstract_syntax, prefer)
    }
    fn send(
        &mut self,
        pc_id: u8,
        cmd: &InMemDicomObject,
        data: Option<&[u8]>,
    ) -> Result<(), PacsError> {
        Link::send(self, pc_id, cmd, data)
    }
    fn receive(&mut self) -> Result<Incoming, PacsError> {
        Link::receive(self)
    }
    fn expect_message(&mut self) -> Result<Message, PacsError> {
        Link::expect_message(self)
    }
    fn release(self: Box<Self>) -> Result<(), PacsError> {
        Link::release(*self)
    }
    fn abort(self: Box<Self>) {
        Link::abort(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_command_encodes_with_its_group_length() {
        let cmd = command(
            field::C_ECHO_RQ,
            tags::MESSAGE_ID,
            7,
            false,
            [uid(tags::AFFECTED_SOP_CLASS_UID, VERIFICATION)],
        );
        let bytes = encode_command(&cmd).unwrap();
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 12);
        let back = decode_dataset(&bytes, "1.2.840.10008.1.2").unwrap();
        assert_eq!(
            back.element(tags::COMMAND_FIELD)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            0x0030
        );
        assert_eq!(
            back.element(tags::MESSAGE_ID)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            7
        );
        assert_eq!(
            back.element(tags::AFFECTED_SOP_CLASS_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            VERIFICATION
        );
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(status_kind(0), StatusKind::Success);
        assert_eq!(status_kind(0xFF01), StatusKind::Pending);
        assert_eq!(status_kind(0xB000), StatusKind::Warning);
        assert_eq!(status_kind(0xA801), StatusKind::Failure);
        assert_eq!(status_text(0xA801), "move destination unknown");
    }
}
