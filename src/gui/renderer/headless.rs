//! An offscreen GPU device and the same image pipeline rendering into a texture (tests and
//! rendering without a window).

use eframe::egui_wgpu::wgpu;

use super::{ImageRenderer, Uniforms};
use crate::dicom::object::ImageInfo;
use crate::dicom::{DisplayParams, Frame};

/// A headless GPU (for tests and for rendering without a window).
pub struct HeadlessGpu {
    /// Device.
    pub device: wgpu::Device,
    /// Queue.
    pub queue: wgpu::Queue,
    /// Adapter description.
    pub adapter_name: String,
}

impl HeadlessGpu {
    /// Open the first adapter wgpu finds (Vulkan/lavapipe on a headless Linux box).
    pub fn new() -> Result<Self, String> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| format!("no GPU adapter: {e}"))?;
        let adapter_name = adapter.get_info().name;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("lofi headless device"),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| format!("no GPU device: {e}"))?;
        Ok(Self {
            device,
            queue,
            adapter_name,
        })
    }

    /// Render a frame at 1:1 through the shader and read the 8-bit grey result back.
    pub fn render(
        &self,
        frame: &Frame,
        info: &ImageInfo,
        p: &DisplayParams,
    ) -> Result<image::GrayImage, String> {
        let fmt = wgpu::TextureFormat::Rgba8Unorm;
        let mut r = ImageRenderer::new(&self.device, fmt);
        r.upload(&self.device, &self.queue, 0, 1, frame, info)?;
        let u = Uniforms::new(info, frame, p).with_rgb_invert(p.invert);
        r.write_uniforms(&self.queue, 0, &u);
        let (w, h) = (frame.width, frame.height);
        let target = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("offscreen target"),
            size: wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: fmt,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let view = target.create_view(&wgpu::TextureViewDescriptor::default());
        let row = (w * 4).div_ceil(256) * 256;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: row as u64 * h as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("offscreen"),
            });
        {
            let mut pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("offscreen pass"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &view,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                ..Default::default()
            });
            r.draw(&mut pass, 0);
        }
        enc.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &target,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &buf,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row),
                    rows_per_image: Some(h),
                },
            },
            wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
        );
        self.queue.submit([enc.finish()]);
        let slice = buf.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| format!("GPU readback: {e}"))?;
        let data = slice
            .get_mapped_range()
            .map_err(|e| format!("GPU readback: {e}"))?;
        let mut out = Vec::with_capacity((w * h) as usize);
        for y in 0..h as usize {
            let r = &data[y * row as usize..];
            for x in 0..w as usize {
                out.push(r[x * 4]);
            }
        }
        drop(data);
        buf.unmap();
        image::GrayImage::from_raw(w, h, out).ok_or_else(|| "readback size".to_string())
    }
}
