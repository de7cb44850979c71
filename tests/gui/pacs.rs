//! The PACS window through the UI: the listener started and stopped from the window (with a
//! stranger refused), "Send SR to PACS" from the AI panel, and — against the real Orthanc that
//! scripts/orthanc.sh starts — search, retrieve into the browser, add to the prior-case store.

use std::sync::Arc;
use std::time::Duration;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use lofi_viewer::gui::{AppCommand, Args, LofiApp};
use lofi_viewer::pacs::scp::{Listener, ScpConfig, ScpEvent};
use lofi_viewer::pacs::{self, Node};
use lofi_viewer::report::AiFinding;
use lofi_viewer::service::AiTask;
use lofi_viewer::util::Cancel;

use super::{answer, fixtures, harness_with, region, save_render, wait_until};

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn open_pacs_window(h: &mut Harness<'static, LofiApp>) {
    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_label("PACS: search, retrieve, receive…").click();
    h.run_steps(3);
    assert!(h.state().state.pacs.open);
}

#[test]
fn pacs_listener_starts_and_stops_from_the_window_and_refuses_strangers() {
    let cache = tempfile::tempdir().unwrap();
    let mut h = harness_with(
        Args {
            study_cache: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        egui::Vec2::new(1400.0, 900.0),
    );
    let port = free_port();
    {
        let s = &mut h.state_mut().state.settings.pacs_listener;
        s.port = port;
        s.bind = "127.0.0.1".into();
    }
    open_pacs_window(&mut h);
    h.get_by_label("Accept calling AE titles").click();
    h.get_by_label("Accept calling AE titles")
        .type_text("PEER, OTHER");
    h.run_steps(2);
    h.get_by_label("Start listening").click();
    h.run_steps(3);
    let listening = &h.state().state.pacs.listener;
    assert!(listening.is_some(), "{:?}", h.state().state.pacs.message);
    assert_eq!(
        h.state().state.settings.pacs_listener.allow,
        vec!["PEER", "OTHER"]
    );
    // a peer on the list sends a study: it is filed in the cache and shows in the browser
    let node = Node::from_address(&format!("LOFIVIEWER@127.0.0.1:{port}"), "PEER").unwrap();
    let file = fixtures().join("dicom/RG1_JLSN_cr_chest_pa_jpegls_nearlossless.dcm");
    let st = pacs::send(&node, &[file], &Cancel::new(), &|_| {}).unwrap();
    assert_eq!(st[0].result, "success");
    wait_until(&mut h, "the pushed image in the browser", |a| {
        a.state
            .pacs
            .listener
            .as_ref()
            .is_some_and(|l| l.received == 1)
            && !a.state.scan.images().is_empty()
    });
    assert!(h.state().state.scan.images()[0]
        .path
        .starts_with(cache.path()));
    // a stranger is refused and the window says why
    let stranger = Node::from_address(&format!("LOFIVIEWER@127.0.0.1:{port}"), "STRANGER").unwrap();
    assert!(pacs::echo(&stranger).is_err());
    wait_until(&mut h, "the refusal", |a| {
        a.state
            .pacs
            .listener
            .as_ref()
            .is_some_and(|l| l.refused == 1)
    });
    let _ = h.get_by_label_contains("refused STRANGER");
    save_render(&mut h, "pacs-listener.png");
    h.get_by_label("Stop listening").click();
    h.run_steps(3);
    assert!(h.state().state.pacs.listener.is_none());
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free once stopped");
}

#[test]
fn pacs_send_sr_from_the_ai_panel_reaches_the_archive() {
    // our own storage SCP plays the archive
    let archive = tempfile::tempdir().unwrap();
    let mut cfg = ScpConfig::new("ARCHIVE", 0, archive.path());
    cfg.bind = "127.0.0.1".into();
    cfg.allow = vec!["LOFIVIEWER".into()];
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g2 = got.clone();
    let l = Listener::start(
        cfg,
        Arc::new(move |e| {
            if let ScpEvent::Stored { received, .. } = e {
                g2.lock().unwrap().push(received);
            }
        }),
    )
    .unwrap();
    let image = fixtures().join("dicom/txv_cr_chest_pa_8bit_jpeg_baseline.dcm");
    let cache = tempfile::tempdir().unwrap();
    let mut h = harness_with(
        Args {
            paths: vec![image],
            study_cache: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        egui::Vec2::new(1400.0, 900.0),
    );
    wait_until(&mut h, "image", |a| a.state.viewports[0].image.is_some());
    h.state_mut().push(AppCommand::PacsSaveNode(
        None,
        Node::from_address(
            &format!("ARCHIVE@127.0.0.1:{}", l.local_addr().port()),
            "LOFIVIEWER",
        )
        .unwrap(),
    ));
    h.run_steps(2);
    answer(
        &mut h,
        AiTask::FindAll,
        vec![AiFinding::from(&region(
            "cardiomegaly",
            [300.0, 400.0, 800.0, 700.0],
            0.7,
        ))],
    );
    h.get_by_label("Send SR to PACS").click();
    wait_until(&mut h, "the send", |a| {
        a.state.pacs.sending.is_none() && a.state.pacs.message.is_some()
    });
    let m = h.state().state.pacs.message.clone().unwrap();
    assert!(!m.error && m.text.contains("sent 1"), "{m:?}");
    std::thread::sleep(Duration::from_millis(200));
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sop_class_uid, pacs::dimse::COMPREHENSIVE_SR);
    let text = format!("{:?}", dicom_object::open_file(&got[0].path).unwrap());
    assert!(text.contains("cardiomegaly"));
    l.stop(Duration::from_secs(1));
}

#[test]
fn pacs_search_and_retrieve_through_the_window_against_orthanc() {
    let Ok(dimse) = std::env::var("LOFI_ORTHANC_DIMSE") else {
        assert!(
            std::env::var("LOFI_REQUIRE_ORTHANC").is_err(),
            "LOFI_ORTHANC_DIMSE is not set but an Orthanc run was required"
        );
        eprintln!("LOFI_ORTHANC_DIMSE not set: run under scripts/orthanc.sh (check.sh does)");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mut h = harness_with(
        Args {
            pacs_node: Some(dimse),
            study_cache: Some(cache.path().to_path_buf()),
            ..Default::default()
        },
        egui::Vec2::new(1400.0, 900.0),
    );
    open_pacs_window(&mut h);
    h.get_by_label("Echo").click();
    wait_until(&mut h, "echo", |a| a.state.pacs.echo.is_some());
    assert!(
        matches!(h.state().state.pacs.echo, Some(Ok(_))),
        "{:?}",
        h.state().state.pacs.echo
    );
    h.get_by_label("Search the archive").click();
    wait_until(&mut h, "search results", |a| {
        a.state.pacs.searching.is_none() && a.state.pacs.answered.is_some()
    });
    // the two seeded studies (other suites may have stored more in the same archive)
    let uids: Vec<String> = h
        .state()
        .state
        .pacs
        .results
        .iter()
        .map(|r| pacs::text(r, "StudyInstanceUID"))
        .collect();
    assert!(
        uids.iter()
            .any(|u| u == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457")
            && uids
                .iter()
                .any(|u| u == "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818"),
        "{uids:?} {:?}",
        h.state().state.pacs.message
    );
    let _ = h.get_by_label("CompressedSamples RG1");
    save_render(&mut h, "pacs-search.png");
    // the RG1 row (sorted as Orthanc answered: find its Retrieve button by row order)
    let row = h
        .state()
        .state
        .pacs
        .results
        .iter()
        .position(|r| pacs::text(r, "PatientID") == "9RG1")
        .unwrap();
    h.get_all_by_label("Retrieve").nth(row).unwrap().click();
    h.run_steps(2);
    assert!(
        h.state().state.pacs.retrieving.is_some(),
        "a retrieve runs in the background"
    );
    wait_until(&mut h, "the retrieved study open", |a| {
        a.state.pacs.retrieving.is_none()
            && a.state.viewports[0].image.is_some()
            && a.state.scan.images().len() == 3
    });
    let r = &h.state().state.pacs.retrieved[0];
    assert_eq!(r.files, 3);
    assert!(r.failed.is_empty());
    assert!(r.label.contains("CompressedSamples RG1"));
    assert!(h.state().state.viewports[0]
        .path
        .as_ref()
        .unwrap()
        .starts_with(cache.path()));
    save_render(&mut h, "pacs-retrieved.png");
    // one click adds the study to the prior-case store (once model and store are ready)
    wait_until(&mut h, "model and store", |a| {
        a.state.ai.model.is_some() && a.state.ai.store.is_some()
    });
    h.get_by_label("Add to prior-case store").click();
    h.run_steps(2);
    wait_until(&mut h, "indexing", |a| a.state.similar.indexing.is_none());
    let store = h.state().state.ai.store.clone().unwrap();
    assert_eq!(store.len().unwrap(), 3);
}
