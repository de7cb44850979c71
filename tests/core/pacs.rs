//! PACS: our SCU against our own storage SCP on loopback (refusals, aborts, malformed data,
//! limits, TLS), and against a real Orthanc archive (scripts/orthanc.sh starts it in a private
//! network namespace and seeds it; the `orthanc_*` tests run there, see check.sh).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use lofi_viewer::pacs::dimse::{self, command, field, uid, us, Link, Session};
use lofi_viewer::pacs::node::RetrieveMethod;
use lofi_viewer::pacs::scp::{Listener, ScpConfig, ScpEvent};
use lofi_viewer::pacs::{
    self, Auth, Level, Limits, Node, PacsError, Query, RetrieveOptions, RetrieveRequest,
};
use lofi_viewer::util::Cancel;

use super::common::fixtures;

const RG1_STUDY: &str = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457";
const TXV_STUDY: &str = "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818";

type Events = Arc<Mutex<Vec<ScpEvent>>>;

fn listener(ae: &str, port: u16, allow: &[&str], out: &Path, limits: Limits) -> (Listener, Events) {
    let mut cfg = ScpConfig::new(ae, port, out);
    cfg.bind = "127.0.0.1".into();
    cfg.allow = allow.iter().map(|s| s.to_string()).collect();
    cfg.limits = limits;
    let events: Events = Arc::default();
    let e2 = events.clone();
    let sink: lofi_viewer::pacs::scp::EventSink = Arc::new(move |e| e2.lock().unwrap().push(e));
    // a fixed port just released by the previous listener of the same test can take a moment
    let t0 = std::time::Instant::now();
    let l = loop {
        match Listener::start(cfg.clone(), sink.clone()) {
            Ok(l) => break l,
            Err(e) if port != 0 && t0.elapsed() < Duration::from_secs(5) => {
                eprintln!("{e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    };
    (l, events)
}

fn node(address: &str, our_ae: &str) -> Node {
    Node::from_address(address, our_ae).unwrap()
}

/// Every file under `dir`, recursively (hidden temporaries included).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn wait_for(events: &Events, what: impl Fn(&ScpEvent) -> bool) -> bool {
    for _ in 0..200 {
        if events.lock().unwrap().iter().any(&what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Decode every frame of a file and return the first frame's pixels as i64s.
fn pixels(p: &Path) -> Vec<i64> {
    let img = lofi_viewer::dicom::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(!img.frames.is_empty());
    match &img.frames[0].pixels {
        lofi_viewer::dicom::Pixels::Mono(v) => v.iter().map(|&x| x as i64).collect(),
        lofi_viewer::dicom::Pixels::Rgb(v) => v.iter().map(|&x| x as i64).collect(),
    }
}

#[test]
fn echo_and_store_to_our_listener_file_by_uid_and_decode_identically() {
    let out = tempfile::tempdir().unwrap();
    let (l, events) = listener("LOFISCP", 0, &["LOFITEST"], out.path(), Limits::default());
    let n = node(
        &format!("LOFISCP@127.0.0.1:{}", l.local_addr().port()),
        "LOFITEST",
    );
    pacs::echo(&n).unwrap();
    let files = [
        fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm"),
        fixtures().join("dicom/RG1_JLSN_cr_chest_pa_jpegls_nearlossless.dcm"),
        fixtures().join("ts/b16_implicit.dcm"),
        fixtures().join("ts/b12_rle.dcm"),
        fixtures().join("fuzz/crash-rle-short-segment.dcm"),
        PathBuf::from("Cargo.toml"),
    ];
    let st = pacs::send(&n, &files, &Cancel::new(), &|_| {}).unwrap();
    assert_eq!(st.len(), files.len());
    for s in &st[..4] {
        assert_eq!(s.result, "success", "{s:?}");
    }
    // a file that is not DICOM never leaves
    assert_eq!(st[5].result, "failure");
    assert!(
        st[5].message.as_ref().unwrap().contains("DICM"),
        "{:?}",
        st[5]
    );
    // a structurally sound file whose RLE segment is short passes the preflight, as it does
    // when opened, and fails at decoding with an error, as it does when opened
    assert_eq!(st[4].result, "success", "{:?}", st[4]);
    assert!(wait_for(&events, |e| matches!(e, ScpEvent::Ended { .. })));
    let stored = files_under(out.path());
    assert_eq!(stored.len(), 5, "{stored:?}");
    let broken = stored.iter().find(|p| {
        p.to_str()
            .unwrap()
            .contains(st[4].sop_instance_uid.as_deref().unwrap())
    });
    let broken = broken.unwrap();
    assert_eq!(
        lofi_viewer::dicom::load(broken).unwrap_err().to_string(),
        lofi_viewer::dicom::load(&files[4]).unwrap_err().to_string()
    );
    for (f, s) in files.iter().zip(&st).take(4) {
        let uid = s.sop_instance_uid.clone().unwrap();
        let got = stored
            .iter()
            .find(|p| p.file_name().unwrap().to_str().unwrap() == format!("{uid}.dcm"));
        let got = got.unwrap_or_else(|| panic!("{uid} not filed: {stored:?}"));
        // filed as OUT/<study>/<series>/<instance>.dcm and decodes to the same pixels
        assert_eq!(
            got.parent().unwrap().parent().unwrap().parent().unwrap(),
            out.path()
        );
        assert_eq!(pixels(got), pixels(f), "{}", f.display());
    }
    l.stop(Duration::from_secs(5));
}

#[test]
fn a_wrong_ae_title_is_refused_with_the_reason() {
    let out = tempfile::tempdir().unwrap();
    let (l, events) = listener("LOFISCP", 0, &["LOFITEST"], out.path(), Limits::default());
    let port = l.local_addr().port();
    // a calling AE title that is not allowed
    let e = pacs::echo(&node(&format!("LOFISCP@127.0.0.1:{port}"), "STRANGER")).unwrap_err();
    match &e {
        PacsError::Refused { reason, .. } => {
            assert!(reason.contains("calling AE title"), "{reason}")
        }
        other => panic!("{other}"),
    }
    // a called AE title that is not ours
    let e = pacs::echo(&node(&format!("SOMEONE@127.0.0.1:{port}"), "LOFITEST")).unwrap_err();
    match &e {
        PacsError::Refused { reason, .. } => {
            assert!(reason.contains("called AE title"), "{reason}")
        }
        other => panic!("{other}"),
    }
    let ev = events.lock().unwrap();
    let refused: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            ScpEvent::Refused {
                calling, reason, ..
            } => Some((calling.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0].0, "STRANGER");
    assert!(refused[0].1.contains("allow-list"));
    drop(ev);
    assert!(files_under(out.path()).is_empty());
    l.stop(Duration::from_secs(1));
}

/// An association to our listener, proposing CR in explicit VR little endian.
fn raw_association(port: u16) -> Box<dyn Session> {
    let a = ClientAssociationOptions::new()
        .calling_ae_title("LOFITEST")
        .called_ae_title("LOFISCP")
        .with_presentation_context("1.2.840.10008.5.1.4.1.1.1", vec!["1.2.840.10008.1.2.1"])
        .with_abstract_syntax(dimse::VERIFICATION)
        .establish(("127.0.0.1", port))
        .unwrap();
    Box::new(Link::new(a, "test", Limits::default()))
}

fn store_rq(instance: &str) -> dicom_object::InMemDicomObject {
    command(
        field::C_STORE_RQ,
        tags::MESSAGE_ID,
        1,
        true,
        [
            uid(tags::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.1"),
            uid(tags::AFFECTED_SOP_INSTANCE_UID, instance),
            us(tags::PRIORITY, 0),
        ],
    )
}

#[test]
fn an_association_aborted_mid_transfer_leaves_no_file_and_the_listener_stays_up() {
    let out = tempfile::tempdir().unwrap();
    let (l, events) = listener("LOFISCP", 0, &["LOFITEST"], out.path(), Limits::default());
    let port = l.local_addr().port();
    let src = std::fs::read(fixtures().join("ts/b16.dcm")).unwrap();
    let (layout, _) = lofi_viewer::dicom::preflight::check(&src).unwrap();
    let data = &src[layout.dataset_start..];
    let a = ClientAssociationOptions::new()
        .calling_ae_title("LOFITEST")
        .called_ae_title("LOFISCP")
        .with_presentation_context("1.2.840.10008.5.1.4.1.1.1", vec!["1.2.840.10008.1.2.1"])
        .establish(("127.0.0.1", port))
        .unwrap();
    let mut link = Link::new(a, "test", Limits::default());
    let pc = link.assoc.presentation_contexts()[0].id;
    link.send(pc, &store_rq("1.2.3.4.5"), None).unwrap();
    // the first 8 kB of the data set, not marked last, then an A-ABORT
    link.assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Data,
                is_last: false,
                data: data[..8192].to_vec(),
            }],
        })
        .unwrap();
    link.abort();
    assert!(wait_for(
        &events,
        |e| matches!(e, ScpEvent::Failed { reason, .. } if reason.contains("aborted"))
    ));
    assert!(
        files_under(out.path()).is_empty(),
        "{:?}",
        files_under(out.path())
    );
    // a connection dropped mid-data set (no abort) leaves nothing either
    let mut s = raw_association(port);
    let (pc, _) = s
        .context_for("1.2.840.10008.5.1.4.1.1.1", &|_| true)
        .unwrap();
    s.send(pc, &store_rq("1.2.3.4.6"), None).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    assert!(files_under(out.path()).is_empty());
    // and the listener still answers
    pacs::echo(&node(&format!("LOFISCP@127.0.0.1:{port}"), "LOFITEST")).unwrap();
    l.stop(Duration::from_secs(2));
}

#[test]
fn a_malformed_data_set_is_refused_and_the_association_goes_on() {
    let out = tempfile::tempdir().unwrap();
    let (l, events) = listener("LOFISCP", 0, &["LOFITEST"], out.path(), Limits::default());
    let mut s = raw_association(l.local_addr().port());
    let (pc, _) = s
        .context_for("1.2.840.10008.5.1.4.1.1.1", &|_| true)
        .unwrap();
    // an element that claims 4 GB
    let garbage = [0x28u8, 0x00, 0x10, 0x00, b'U', b'S', 0xff, 0xff, 1, 2];
    s.send(pc, &store_rq("1.2.3.4.7"), Some(&garbage)).unwrap();
    let rsp = s.expect_message().unwrap();
    assert_eq!(rsp.field(), field::C_STORE_RSP);
    assert_eq!(rsp.status(), 0xC000);
    assert!(rsp.comment().is_some());
    // a data set whose SOP Instance UID differs from the command's is refused too
    let src = std::fs::read(fixtures().join("ts/b16.dcm")).unwrap();
    let (layout, _) = lofi_viewer::dicom::preflight::check(&src).unwrap();
    s.send(
        pc,
        &store_rq("1.2.3.4.8"),
        Some(&src[layout.dataset_start..]),
    )
    .unwrap();
    assert_eq!(s.expect_message().unwrap().status(), 0xC000);
    assert!(files_under(out.path()).is_empty());
    s.release().unwrap();
    assert!(wait_for(&events, |e| matches!(
        e,
        ScpEvent::Ended { stored: 0, .. }
    )));
    let failed = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, ScpEvent::Failed { .. }))
        .count();
    assert_eq!(failed, 2);
    l.stop(Duration::from_secs(1));
}

#[test]
fn an_instance_over_the_size_limit_is_refused_and_nothing_is_kept() {
    let out = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_instance_bytes: 100_000,
        max_association_bytes: 1 << 30,
    };
    let (l, events) = listener("LOFISCP", 0, &["LOFITEST"], out.path(), limits);
    let n = node(
        &format!("LOFISCP@127.0.0.1:{}", l.local_addr().port()),
        "LOFITEST",
    );
    let big = fixtures().join("dicom/RG1_J2KI_cr_chest_pa_15bit_mono1_j2k.dcm"); // 677 kB
    let r = pacs::send(&n, &[big], &Cancel::new(), &|_| {});
    assert!(
        r.is_err() || r.as_ref().unwrap()[0].result == "failure",
        "{r:?}"
    );
    assert!(wait_for(
        &events,
        |e| matches!(e, ScpEvent::Failed { reason, .. } if reason.contains("limit"))
    ));
    assert!(files_under(out.path()).is_empty());
    // a small one still goes through on a new association
    let st = pacs::send(&n, &[fixtures().join("ts/b8.dcm")], &Cancel::new(), &|_| {}).unwrap();
    assert_eq!(st[0].result, "success");
    l.stop(Duration::from_secs(1));
}

fn openssl(args: &[&str], dir: &Path) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed by scripts/setup-system.sh");
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn dimse_over_tls_echoes_and_stores() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(
        p.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=lofi test CA",
        ],
        p,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "scp.key",
            "-out",
            "scp.csr",
            "-subj",
            "/CN=localhost",
        ],
        p,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "scp.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "scp.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        p,
    );
    let out = tempfile::tempdir().unwrap();
    let mut cfg = ScpConfig::new("LOFISCP", 0, out.path());
    cfg.bind = "127.0.0.1".into();
    cfg.allow = vec!["LOFITEST".into()];
    cfg.tls = Some(pacs::tls::server_config(&p.join("scp.pem"), &p.join("scp.key")).unwrap());
    let l = Listener::start(cfg, Arc::new(|_| {})).unwrap();
    let mut n = node(
        &format!("LOFISCP@localhost:{}", l.local_addr().port()),
        "LOFITEST",
    );
    n.tls = true;
    n.ca_file = Some(p.join("ca.pem"));
    pacs::echo(&n).unwrap();
    let st = pacs::send(&n, &[fixtures().join("ts/b8.dcm")], &Cancel::new(), &|_| {}).unwrap();
    assert_eq!(st[0].result, "success");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(files_under(out.path()).len(), 1);
    // without trusting the CA the handshake fails with an error, not a hang or a panic
    n.ca_file = None;
    assert!(pacs::echo(&n).is_err());
    // and a plain-TCP client cannot talk to the TLS listener
    n.tls = false;
    assert!(pacs::echo(&n).is_err());
    l.stop(Duration::from_secs(1));
}

// ---------------------------------------------------------------- against Orthanc

struct Orthanc {
    dimse: String,
    web: String,
    rest: String,
    user: String,
    password: String,
    ca: PathBuf,
}

fn orthanc() -> Option<Orthanc> {
    let Ok(dimse) = std::env::var("LOFI_ORTHANC_DIMSE") else {
        assert!(
            std::env::var("LOFI_REQUIRE_ORTHANC").is_err(),
            "LOFI_ORTHANC_DIMSE is not set but an Orthanc run was required"
        );
        eprintln!(
            "LOFI_ORTHANC_DIMSE not set: the Orthanc tests run under scripts/orthanc.sh (check.sh)"
        );
        return None;
    };
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by scripts/orthanc.sh"));
    Some(Orthanc {
        dimse,
        web: var("LOFI_ORTHANC_WEB"),
        rest: var("LOFI_ORTHANC_REST"),
        user: var("LOFI_ORTHANC_USER"),
        password: var("LOFI_ORTHANC_PASSWORD"),
        ca: PathBuf::from(var("LOFI_ORTHANC_CA")),
    })
}

impl Orthanc {
    fn dimse_node(&self) -> Node {
        node(&self.dimse, "LOFIVIEWER")
    }
    fn web_node(&self) -> Node {
        let mut n = node(&self.web, "LOFIVIEWER");
        n.auth = Auth::Basic {
            user: self.user.clone(),
            password: self.password.clone(),
        };
        n.ca_file = Some(self.ca.clone());
        n
    }
    fn rest(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
        use base64::Engine as _;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.rest);
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password))
        );
        let mut resp = match method {
            "GET" => agent
                .get(&url)
                .header("Authorization", &auth)
                .call()
                .unwrap(),
            _ => agent
                .post(&url)
                .header("Authorization", &auth)
                .send(body.unwrap_or("").as_bytes())
                .unwrap(),
        };
        let status = resp.status().as_u16();
        (
            status,
            resp.body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .unwrap(),
        )
    }
    /// Orthanc's id of a study / instance by its DICOM UID.
    fn lookup(&self, uid: &str) -> String {
        let (st, body) = self.rest("POST", "/tools/lookup", Some(uid));
        assert_eq!(st, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v[0]["ID"]
            .as_str()
            .unwrap_or_else(|| panic!("{uid} not in Orthanc: {v}"))
            .to_string()
    }
}

/// Orthanc's push target (LOFIPUSH at 127.0.0.1:11114) is one port: one test at a time.
static PUSH_PORT: Mutex<()> = Mutex::new(());

#[test]
fn orthanc_echo_and_find_at_study_and_series_level() {
    let Some(o) = orthanc() else { return };
    let n = o.dimse_node();
    pacs::echo(&n).unwrap();
    let c = Cancel::new();
    let all = pacs::find(&n, &Query::default(), &c).unwrap();
    assert!(all.len() >= 2, "{all:?}");
    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query::default();
        f(&mut q);
        pacs::find(&n, &q, &c).unwrap()
    };
    let rg1 = q(&|q| q.patient_id = "9RG1".into());
    assert_eq!(rg1.len(), 1);
    assert_eq!(rg1[0]["StudyInstanceUID"], RG1_STUDY);
    assert_eq!(rg1[0]["NumberOfStudyRelatedInstances"], 3);
    assert_eq!(rg1[0]["ModalitiesInStudy"], serde_json::json!(["CR"]));
    assert_eq!(rg1[0]["PatientName"], "CompressedSamples^RG1");
    assert_eq!(
        q(&|q| q.patient_name = "compressed*".into()).len(),
        1,
        "wildcards, case-insensitive in Orthanc"
    );
    let by_date = q(&|q| q.study_date = "19000101-19011231".into());
    assert_eq!(by_date.len(), 1);
    assert_eq!(by_date[0]["StudyInstanceUID"], TXV_STUDY);
    assert_eq!(q(&|q| q.study_date = "20040826-".into()).len(), 1);
    assert_eq!(q(&|q| q.modality = "CR".into()).len(), 2);
    assert_eq!(q(&|q| q.modality = "MR".into()).len(), 0);
    assert_eq!(q(&|q| q.accession = "exam Number".into()).len(), 1);
    let series = q(&|q| {
        q.level = Level::Series;
        q.study_uid = RG1_STUDY.into();
    });
    assert_eq!(series.len(), 2, "{series:?}");
    let mut counts: Vec<i64> = series
        .iter()
        .map(|s| s["NumberOfSeriesRelatedInstances"].as_i64().unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, vec![1, 2]);
    assert!(series
        .iter()
        .all(|s| s["PatientID"] == "9RG1" && s["Modality"] == "CR"));
    // the series level without a study UID walks the studies
    let all_series = q(&|q| q.level = Level::Series);
    let seeded = all_series
        .iter()
        .filter(|s| s["StudyInstanceUID"] == RG1_STUDY || s["StudyInstanceUID"] == TXV_STUDY)
        .count();
    assert_eq!(seeded, 3, "{all_series:?}");
}

#[test]
fn orthanc_wrong_called_ae_title_is_refused() {
    let Some(o) = orthanc() else { return };
    let addr = o.dimse.replace("ORTHANC@", "NOTORTHANC@");
    match pacs::echo(&node(&addr, "LOFIVIEWER")).unwrap_err() {
        PacsError::Refused { reason, .. } => {
            assert!(reason.contains("called AE title"), "{reason}")
        }
        other => panic!("{other}"),
    }
}

fn check_rg1(got: &pacs::Retrieved) {
    assert!(got.failed.is_empty(), "{:?}", got.failed);
    assert_eq!(got.files.len(), 3, "{:?}", got.files);
    let mut series: Vec<String> = Vec::new();
    for f in &got.files {
        let img = lofi_viewer::dicom::load(f).unwrap();
        assert_eq!(img.info.study_uid, RG1_STUDY);
        assert!(img.frames[0].width > 1000, "decoded");
        series.push(img.info.series_uid.clone());
    }
    series.sort();
    series.dedup();
    assert_eq!(series.len(), 2);
    // the retrieved study organises into one study with two series, as the browser shows it
    let scan = lofi_viewer::dicom::study::scan(&got.files, &Cancel::new(), &|_, _| {});
    assert_eq!(scan.patients.len(), 1);
}

#[test]
fn orthanc_c_get_retrieves_a_multi_instance_study_that_opens() {
    let Some(o) = orthanc() else { return };
    let out = tempfile::tempdir().unwrap();
    let seen = Mutex::new(Vec::new());
    let got = pacs::retrieve(
        &o.dimse_node(),
        &RetrieveRequest {
            study_uid: RG1_STUDY.into(),
            series_uid: None,
        },
        out.path(),
        &RetrieveOptions {
            method: RetrieveMethod::Get,
            ..RetrieveOptions::for_node(&o.dimse_node())
        },
        &Cancel::new(),
        &|p| seen.lock().unwrap().push(p),
    )
    .unwrap();
    check_rg1(&got);
    assert!(!seen.lock().unwrap().is_empty(), "progress was reported");
    // one series only
    let out2 = tempfile::tempdir().unwrap();
    let one = pacs::retrieve(
        &o.dimse_node(),
        &RetrieveRequest {
            study_uid: RG1_STUDY.into(),
            series_uid: Some("1.3.6.1.4.1.5962.1.3.9.1.20040826185059.5457.2".into()),
        },
        out2.path(),
        &RetrieveOptions::for_node(&o.dimse_node()),
        &Cancel::new(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(one.files.len(), 1);
}

#[test]
fn orthanc_c_move_retrieves_to_our_scp_for_the_duration_of_the_move() {
    let Some(o) = orthanc() else { return };
    let out = tempfile::tempdir().unwrap();
    let opts = RetrieveOptions {
        method: RetrieveMethod::Move,
        bind: "127.0.0.1".into(),
        port: 11113,
        limits: Limits::default(),
    };
    let req = RetrieveRequest {
        study_uid: RG1_STUDY.into(),
        series_uid: None,
    };
    let got = pacs::retrieve(
        &o.dimse_node(),
        &req,
        out.path(),
        &opts,
        &Cancel::new(),
        &|_| {},
    )
    .unwrap();
    check_rg1(&got);
    // the SCP is gone after the move: the port is free again
    std::net::TcpListener::bind(("127.0.0.1", 11113)).unwrap();
}

#[test]
fn orthanc_pushes_a_study_to_our_listener_and_a_stranger_is_refused() {
    let Some(o) = orthanc() else { return };
    let _port = PUSH_PORT.lock().unwrap_or_else(|e| e.into_inner());
    let study = o.lookup(RG1_STUDY);
    let push = || {
        o.rest(
            "POST",
            "/modalities/lofipush/store",
            Some(&format!(
                "{{\"Resources\": [\"{study}\"], \"Synchronous\": true}}"
            )),
        )
    };
    // allowed: Orthanc's AE title is on the list
    let out = tempfile::tempdir().unwrap();
    let (l, events) = listener(
        "LOFIPUSH",
        11114,
        &["ORTHANC"],
        out.path(),
        Limits::default(),
    );
    let (st, body) = push();
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    assert!(wait_for(&events, |e| matches!(e, ScpEvent::Ended { .. })));
    let files = files_under(out.path());
    assert_eq!(files.len(), 3, "{files:?}");
    check_rg1(&pacs::Retrieved {
        files,
        failed: vec![],
    });
    l.stop(Duration::from_secs(2));
    // not on the list: refused, reported with the reason, nothing written
    let out = tempfile::tempdir().unwrap();
    let (l, events) = listener(
        "LOFIPUSH",
        11114,
        &["SOMEONEELSE"],
        out.path(),
        Limits::default(),
    );
    let (st, _) = push();
    assert_ne!(st, 200);
    let ev = events.lock().unwrap();
    assert!(
        ev.iter().any(|e| matches!(e, ScpEvent::Refused { calling, reason, .. } if calling == "ORTHANC" && reason.contains("allow-list"))),
        "{ev:?}"
    );
    drop(ev);
    assert!(files_under(out.path()).is_empty());
    l.stop(Duration::from_secs(1));
}

#[test]
fn orthanc_stores_our_structured_report_and_dsrdump_reads_it_back() {
    let Some(o) = orthanc() else { return };
    // a study of its own, so the seeded studies keep their counts for the other tests
    let img = lofi_viewer::dicom::load(&fixtures().join("ts/b16.dcm")).unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for (i, n) in [o.dimse_node(), o.web_node()].iter().enumerate() {
        let sr = d.path().join(format!("sr{i}.dcm"));
        lofi_viewer::dicom::sr::write(&super::report::results(), &img.info, None, &sr).unwrap();
        let st = pacs::send(n, std::slice::from_ref(&sr), &Cancel::new(), &|_| {}).unwrap();
        assert_eq!(st[0].result, "success", "{:?}", st[0]);
        reports.push(st[0].sop_instance_uid.clone().unwrap());
    }
    for sop in reports {
        let id = o.lookup(&sop);
        let (status, bytes) = o.rest("GET", &format!("/instances/{id}/file"), None);
        assert_eq!(status, 200);
        let p = d.path().join("back.dcm");
        std::fs::write(&p, bytes).unwrap();
        let out = std::process::Command::new("dsrdump")
            .arg("-Ee")
            .arg(&p)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("cardiomegaly") && stdout.contains("SCOORD"),
            "{stdout}"
        );
        // filed in the image's study
        let obj = dicom_object::open_file(&p).unwrap();
        assert_eq!(
            obj.element(tags::STUDY_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap(),
            img.info.study_uid
        );
    }
}

#[test]
fn orthanc_dicomweb_search_and_retrieve_over_https_with_basic_auth() {
    let Some(o) = orthanc() else { return };
    let n = o.web_node();
    assert!(n.address.starts_with("https://"), "{}", n.address);
    pacs::echo(&n).unwrap();
    let c = Cancel::new();
    let rg1 = pacs::find(
        &n,
        &Query {
            patient_id: "9RG1".into(),
            ..Default::default()
        },
        &c,
    )
    .unwrap();
    assert_eq!(rg1.len(), 1);
    assert_eq!(rg1[0]["StudyInstanceUID"], RG1_STUDY);
    assert_eq!(rg1[0]["NumberOfStudyRelatedInstances"], 3);
    let series = pacs::find(
        &n,
        &Query {
            level: Level::Series,
            study_uid: RG1_STUDY.into(),
            ..Default::default()
        },
        &c,
    )
    .unwrap();
    assert_eq!(series.len(), 2);
    let out = tempfile::tempdir().unwrap();
    let got = pacs::retrieve(
        &n,
        &RetrieveRequest {
            study_uid: RG1_STUDY.into(),
            series_uid: None,
        },
        out.path(),
        &RetrieveOptions::for_node(&n),
        &c,
        &|_| {},
    )
    .unwrap();
    check_rg1(&got);
    // HTTPS: without the archive's CA the certificate is not trusted, and that is the error
    let mut untrusted = n.clone();
    untrusted.ca_file = None;
    match pacs::echo(&untrusted).unwrap_err() {
        PacsError::Http { reason, .. } => {
            assert!(
                reason.to_lowercase().contains("certificate") || reason.contains("issuer"),
                "{reason}"
            )
        }
        other => panic!("{other}"),
    }
    // a wrong password is an HTTP error naming the status
    let mut bad = n.clone();
    bad.auth = Auth::Basic {
        user: o.user.clone(),
        password: "wrong".into(),
    };
    match pacs::echo(&bad).unwrap_err() {
        PacsError::Http { reason, .. } => assert!(reason.contains("401"), "{reason}"),
        other => panic!("{other}"),
    }
}

#[test]
fn orthanc_cli_prints_the_contract_json() {
    let Some(o) = orthanc() else { return };
    let bin = env!("CARGO_BIN_EXE_lofi-viewer");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("--headless")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let found = run(&[
        "pacs",
        "find",
        "--node",
        &o.dimse,
        "--patient-name",
        "Compressed*",
    ]);
    assert_eq!(found[0]["StudyInstanceUID"], RG1_STUDY);
    let out = tempfile::tempdir().unwrap();
    let got = run(&[
        "pacs",
        "get",
        "--node",
        &o.dimse,
        "--study",
        RG1_STUDY,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(got["files"].as_array().unwrap().len(), 3);
    assert_eq!(got["failed"].as_array().unwrap().len(), 0);
    let echo = run(&["pacs", "echo", "--node", &o.dimse]);
    assert_eq!(echo["status"], "success");
}
