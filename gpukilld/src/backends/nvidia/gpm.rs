//! GPM activity (Hopper and newer): one GPM sample per GPU per poll, and the activity
//! ratios between it and the previous poll's sample, as dcgm-exporter's profiling fields.

use std::collections::BTreeMap;

use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::gpm::gpm_metrics_get;
use nvml_wrapper::{Device, GpmSample, Nvml};

use super::device::{FieldReader, is_unsupported};
use crate::health::GpmActivity;

/// The metrics read, in `GpmActivity`'s order: graphics engine, SM, tensor pipes, DRAM.
const METRICS: [GpmMetricId; 4] = [
    GpmMetricId::GraphicsUtil,
    GpmMetricId::SmUtil,
    GpmMetricId::AnyTensorUtil,
    GpmMetricId::DramBwUtil,
];

/// What is known of one GPU's GPM.
#[derive(Debug)]
enum GpuGpm {
    /// NVML says the GPU has no GPM (older than Hopper), or the library lacks it.
    Unsupported,
    /// Supported; the previous poll's sample, as a raw handle (held across polls without
    /// borrowing the `Nvml` it came from; freed by [`Gpm::free`] or the next poll).
    Supported { previous: Option<usize> },
}

/// Per GPU index, its GPM state. Samples it holds must be given back with [`Gpm::free`]
/// before the `Nvml` they came from is shut down.
#[derive(Debug, Default)]
pub(super) struct Gpm {
    gpus: BTreeMap<u32, GpuGpm>,
}

impl Gpm {
    /// Takes GPU `index`'s sample of this poll and returns the activity since the
    /// previous one: absent on the first poll, on a GPU without GPM, and for each metric
    /// NVML does not answer.
    pub(super) fn read(
        &mut self,
        nvml: &Nvml,
        index: u32,
        device: &Device<'_>,
        fields: &mut FieldReader,
    ) -> Option<GpmActivity> {
        if fields.fatal {
            return None;
        }
        let state = match self.gpus.get_mut(&index) {
            Some(state) => state,
            None => {
                let state = match device.gpm_support() {
                    Ok(true) => GpuGpm::Supported { previous: None },
                    Ok(false) => GpuGpm::Unsupported,
                    Err(error) if is_unsupported(&error) => GpuGpm::Unsupported,
                    // Asked again next poll.
                    Err(error) => return fields.read_health("gpm support", || Err(error)),
                };
                self.gpus.entry(index).or_insert(state)
            }
        };
        let GpuGpm::Supported { previous } = state else {
            return None;
        };
        let earlier = previous.take().map(|raw| {
            // SAFETY: `raw` came from `GpmSample::into_handle` on this `nvml` (the only
            // place that stores one) and has not been freed: it is taken out of the map
            // here, so this is its one owner again.
            unsafe { GpmSample::from_handle(nvml, raw as _) }
        });
        let sample = fields.read_health("gpm sample", || device.gpm_sample())?;
        let activity = earlier.and_then(|earlier| {
            let results = fields.read_health("gpm metrics", || {
                gpm_metrics_get(nvml, &earlier, &sample, &METRICS)
            })?;
            let ratio = |i: usize| {
                results
                    .get(i)
                    .and_then(|result| result.as_ref().ok())
                    .map(|result| (result.value / 100.0).clamp(0.0, 1.0))
            };
            let activity = GpmActivity {
                graphics_engine: ratio(0),
                sm: ratio(1),
                tensor: ratio(2),
                dram: ratio(3),
            };
            (activity != GpmActivity::default()).then_some(activity)
        });
        *previous = Some(sample.into_handle() as usize);
        activity
    }

    /// Forgets GPU `index` (it did not answer), freeing its sample.
    pub(super) fn forget(&mut self, nvml: &Nvml, index: u32) {
        if let Some(GpuGpm::Supported {
            previous: Some(raw),
        }) = self.gpus.remove(&index)
        {
            // SAFETY: as in `read`: a handle from `into_handle` on this `nvml`, owned
            // by the map until now.
            drop(unsafe { GpmSample::from_handle(nvml, raw as _) });
        }
    }

    /// Frees every sample held (before `nvml` is shut down).
    pub(super) fn free(&mut self, nvml: &Nvml) {
        let indices: Vec<u32> = self.gpus.keys().copied().collect();
        for index in indices {
            self.forget(nvml, index);
        }
    }
}
