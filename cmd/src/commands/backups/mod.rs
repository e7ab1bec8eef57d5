//! `list`, `describe`, `delete` (VolumeBackups) and `cleanup` (what an interrupted `create`
//! left).

mod cleanup;
mod delete;
mod describe;
mod list;

pub use cleanup::cleanup;
pub use delete::delete;
pub use describe::describe;
pub use list::list;
