//! GPU image display: stored pixel values are uploaded once per frame into an `R32Float`
//! texture and `shaders/window_level.wgsl` applies modality LUT, VOI and inversion per fragment.
//! Window/level changes only rewrite a 112-byte uniform block. The pipeline, bind-group layout and
//! per-slot buffers live in egui-wgpu's `callback_resources`; the paint callback only writes
//! uniforms and draws. The same pipeline renders offscreen for tests and screenshots.

use std::collections::HashMap;

use eframe::egui_wgpu::{self, wgpu};

use crate::dicom::lut::{output_inverted, padding_range};
use crate::dicom::object::{ImageInfo, VoiFunction};
use crate::dicom::{DisplayParams, Frame, Pixels, Voi};

mod headless;
pub use headless::HeadlessGpu;

/// The WGSL source (validated by naga in tests).
pub const SHADER: &str = include_str!("../../../shaders/window_level.wgsl");

/// Uniform block; mirrors `Params` in the shader.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Uniforms {
    /// Clip-space corners: top-left, top-right, bottom-left, bottom-right.
    pub corners: [[f32; 2]; 4],
    /// Image size (columns, rows).
    pub image_size: [f32; 2],
    slope: f32,
    intercept: f32,
    center: f32,
    width: f32,
    voi_function: u32,
    invert: u32,
    pad_lo: f32,
    pad_hi: f32,
    has_padding: u32,
    mlut_first: f32,
    mlut_len: u32,
    vlut_first: f32,
    vlut_len: u32,
    vlut_max: f32,
    is_rgb: u32,
    /// Bilinear interpolation of displayed values.
    pub smooth: u32,
    /// Layer opacity.
    pub opacity: f32,
    _pad: f32,
}

impl Uniforms {
    /// Uniforms for an image and display parameters; corners fill the viewport.
    pub fn new(info: &ImageInfo, frame: &Frame, p: &DisplayParams) -> Self {
        let (center, width, voi_function) = match p.voi {
            Voi::Window {
                center,
                width,
                function,
            } => (
                center as f32,
                width as f32,
                match function {
                    VoiFunction::Linear => 0,
                    VoiFunction::LinearExact => 1,
                    VoiFunction::Sigmoid => 2,
                },
            ),
            Voi::Lut(_) => (0.0, 1.0, 3),
        };
        let vlut = match p.voi {
            Voi::Lut(i) => info.voi_luts.get(i),
            _ => None,
        };
        let pad = padding_range(info);
        Self {
            corners: [[-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]],
            image_size: [frame.width as f32, frame.height as f32],
            slope: info.rescale_slope as f32,
            intercept: info.rescale_intercept as f32,
            center,
            width,
            voi_function,
            invert: output_inverted(info, p.invert) as u32,
            pad_lo: pad.map_or(0.0, |p| p.0 as f32),
            pad_hi: pad.map_or(0.0, |p| p.1 as f32),
            has_padding: pad.is_some() as u32,
            mlut_first: info
                .modality_lut
                .as_ref()
                .map_or(0.0, |l| l.first_mapped as f32),
            mlut_len: info
                .modality_lut
                .as_ref()
                .map_or(0, |l| l.data.len() as u32),
            vlut_first: vlut.map_or(0.0, |l| l.first_mapped as f32),
            vlut_len: vlut.map_or(0, |l| l.data.len() as u32),
            vlut_max: vlut.map_or(1.0, |l| l.max_out() as f32),
            is_rgb: matches!(frame.pixels, Pixels::Rgb(_)) as u32,
            smooth: 0,
            opacity: 1.0,
            _pad: 0.0,
        }
    }

    /// For colour images the user's invert is applied directly.
    pub fn with_rgb_invert(mut self, invert: bool) -> Self {
        if self.is_rgb == 1 {
            self.invert = invert as u32;
        }
        self
    }
}

/// One displayed image slot (viewport): its textures, uniform buffer and bind group.
struct Slot {
    image_key: u64,
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    _textures: Vec<wgpu::Texture>,
}

/// The pipeline and every slot's resources.
pub struct ImageRenderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    slots: HashMap<u32, Slot>,
    /// Largest texture side the device accepts.
    pub max_texture_side: u32,
}

fn texture_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    }
}

fn make_texture(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    label: &str,
    (w, h): (u32, u32),
    format: wgpu::TextureFormat,
    bytes: &[u8],
    bytes_per_pixel: u32,
) -> wgpu::Texture {
    let size = wgpu::Extent3d {
        width: w.max(1),
        height: h.max(1),
        depth_or_array_layers: 1,
    };
    let t = device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture: &t,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        bytes,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(bytes_per_pixel * size.width),
            rows_per_image: Some(size.height),
        },
        size,
    );
    t
}

fn lut_bytes(l: Option<&crate::dicom::object::Lut>) -> (u32, Vec<u8>) {
    match l {
        Some(l) if !l.data.is_empty() => (
            l.data.len() as u32,
            l.data
                .iter()
                .flat_map(|v| (*v as f32).to_le_bytes())
                .collect(),
        ),
        _ => (1, 0f32.to_le_bytes().to_vec()),
    }
}

impl ImageRenderer {
    /// Build the pipeline for the surface format.
    pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("window_level.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("window_level bind group layout"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                texture_entry(1),
                texture_entry(2),
                texture_entry(3),
                texture_entry(4),
            ],
        });
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("window_level pipeline layout"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("window_level pipeline"),
            layout: Some(&pl),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });
        Self {
            pipeline,
            layout,
            slots: HashMap::new(),
            max_texture_side: device.limits().max_texture_dimension_2d,
        }
    }

    /// Whether `slot` already holds the image `key`.
    pub fn holds(&self, slot: u32, key: u64) -> bool {
        self.slots.get(&slot).is_some_and(|s| s.image_key == key)
    }

    /// Upload a frame's stored values (once per image/frame) into `slot`.
    pub fn upload(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        slot: u32,
        key: u64,
        frame: &Frame,
        info: &ImageInfo,
    ) -> Result<(), String> {
        let (w, h) = (frame.width, frame.height);
        if w > self.max_texture_side || h > self.max_texture_side {
            return Err(format!(
                "image of {w}×{h} exceeds the GPU's {} px texture limit",
                self.max_texture_side
            ));
        }
        let r32 = |label: &str, size: (u32, u32), bytes: &[u8]| {
            make_texture(
                device,
                queue,
                label,
                size,
                wgpu::TextureFormat::R32Float,
                bytes,
                4,
            )
        };
        let rgba8 = |label: &str, size: (u32, u32), bytes: &[u8]| {
            make_texture(
                device,
                queue,
                label,
                size,
                wgpu::TextureFormat::Rgba8Unorm,
                bytes,
                4,
            )
        };
        let (grey, rgb) = match &frame.pixels {
            Pixels::Mono(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                (
                    r32("stored values", (w, h), &bytes),
                    rgba8("rgb (unused)", (1, 1), &[0; 4]),
                )
            }
            Pixels::Rgb(v) => {
                let rgba: Vec<u8> = v
                    .chunks_exact(3)
                    .flat_map(|c| [c[0], c[1], c[2], 255])
                    .collect();
                (
                    r32("grey (unused)", (1, 1), &[0; 4]),
                    rgba8("rgb", (w, h), &rgba),
                )
            }
        };
        let (mn, mb) = lut_bytes(info.modality_lut.as_ref());
        let mlut = r32("modality LUT", (mn, 1), &mb);
        // the VOI LUT texture holds the file's first VOI LUT; other choices re-upload
        let (vn, vb) = lut_bytes(info.voi_luts.first());
        let vlut = r32("VOI LUT", (vn, 1), &vb);
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("window_level uniforms"),
            size: std::mem::size_of::<Uniforms>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let view = |t: &wgpu::Texture| t.create_view(&wgpu::TextureViewDescriptor::default());
        let (gv, rv, mv, vv) = (view(&grey), view(&rgb), view(&mlut), view(&vlut));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("window_level bind group"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniforms.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&gv),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(&rv),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::TextureView(&mv),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: wgpu::BindingResource::TextureView(&vv),
                },
            ],
        });
        self.slots.insert(
            slot,
            Slot {
                image_key: key,
                uniforms,
                bind_group,
                _textures: vec![grey, rgb, mlut, vlut],
            },
        );
        Ok(())
    }

    /// Write a slot's uniforms.
    pub fn write_uniforms(&self, queue: &wgpu::Queue, slot: u32, u: &Uniforms) {
        if let Some(s) = self.slots.get(&slot) {
            queue.write_buffer(&s.uniforms, 0, bytemuck::bytes_of(u));
        }
    }

    /// Draw a slot into the current pass.
    pub fn draw(&self, pass: &mut wgpu::RenderPass<'_>, slot: u32) {
        if let Some(s) = self.slots.get(&slot) {
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &s.bind_group, &[]);
            pass.draw(0..6, 0..1);
        }
    }
}

/// The paint callback of one viewport slot.
pub struct ImageCallback {
    /// Which slot.
    pub slot: u32,
    /// Its uniforms this frame.
    pub uniforms: Uniforms,
}

impl egui_wgpu::CallbackTrait for ImageCallback {
    fn prepare(
        &self,
        _device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if let Some(r) = resources.get::<ImageRenderer>() {
            r.write_uniforms(queue, self.slot, &self.uniforms);
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        if let Some(r) = resources.get::<ImageRenderer>() {
            r.draw(pass, self.slot);
        }
    }
}

/// A paint callback that first uploads the image when its GPU slot holds another one, then draws
/// it (what the viewport paints).
pub struct UploadingCallback {
    /// GPU slot (one per pane).
    pub slot: u32,
    /// Key, image and frame to show.
    pub image: (u64, std::sync::Arc<crate::dicom::LoadedImage>, usize),
    /// The draw.
    pub draw: ImageCallback,
}

impl egui_wgpu::CallbackTrait for UploadingCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        screen: &egui_wgpu::ScreenDescriptor,
        encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let (key, img, frame) = &self.image;
        if let Some(r) = resources.get_mut::<ImageRenderer>() {
            if !r.holds(self.slot, *key) {
                if let Some(f) = img.frames.get(*frame) {
                    if let Err(e) = r.upload(device, queue, self.slot, *key, f, &img.info) {
                        tracing::error!("GPU upload failed: {e}");
                    }
                }
            }
        }
        self.draw.prepare(device, queue, screen, encoder, resources)
    }

    fn paint(
        &self,
        info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        self.draw.paint(info, pass, resources)
    }
}

impl UploadingCallback {
    /// The egui shape that runs this callback over `rect`.
    pub fn into_shape(self, rect: egui::Rect) -> egui::Shape {
        egui::Shape::Callback(egui_wgpu::Callback::new_paint_callback(rect, self))
    }
}
