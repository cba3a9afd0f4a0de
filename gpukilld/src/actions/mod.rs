//! The only code that changes the world: killing processes (and, later, resetting GPUs).
//! Every safety check lives here: protection, PID-reuse safety, authorization is applied by
//! the caller through [`crate::authz::Principal`] before anything reaches [`kill::execute`].

pub mod kill;
pub mod protect;
pub mod reset;
