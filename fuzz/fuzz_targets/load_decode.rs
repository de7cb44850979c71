//! Load + decode + render arbitrary bytes as DICOM (and as a bare JPEG stream). Any panic or an
//! allocation beyond the RSS limit is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = lofi_viewer::dicom::load_dicom_bytes(data) {
        for f in &img.frames {
            let p = lofi_viewer::dicom::DisplayParams {
                voi: lofi_viewer::dicom::lut::default_voi(&img.info, f),
                invert: false,
            };
            let _ = lofi_viewer::dicom::lut::render(f, &img.info, &p);
        }
    }
    let _ = lofi_viewer::dicom::jpeg::decode(data);
});
