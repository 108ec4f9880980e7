//! The few Mosquitto 2.0.11 types and functions the plugin uses, declared by hand.
//!
//! The structs mirror `mosquitto_broker.h` / `mosquitto_plugin.h` of 2.0.11 field for field
//! (the `layout_matches_the_installed_headers` test compiles the headers and compares sizes and
//! offsets). Every broker function is looked up at run time with `dlsym(RTLD_DEFAULT, ..)`, so
//! the library has no undefined symbols at link time (its unit tests link as a plain program)
//! and a missing internal function is a fallback, not a load failure.

use std::ffi::{CStr, c_char, c_int, c_void};

/// `struct mosquitto`: opaque; only ever handled by pointer.
#[repr(C)]
pub struct Mosquitto {
    _private: [u8; 0],
}

/// `mosquitto_property` (`struct mqtt5__property`): opaque list built by the broker's functions.
#[repr(C)]
pub struct Property {
    _private: [u8; 0],
}

/// `mosquitto_plugin_id_t`: opaque.
#[repr(C)]
pub struct PluginId {
    _private: [u8; 0],
}

/// `struct mosquitto_opt`.
#[repr(C)]
pub struct Opt {
    pub key: *mut c_char,
    pub value: *mut c_char,
}

/// `struct mosquitto_evt_control`.
#[repr(C)]
pub struct EvtControl {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub topic: *const c_char,
    pub payload: *const c_void,
    pub properties: *const Property,
    pub reason_string: *mut c_char,
    pub payloadlen: u32,
    pub qos: u8,
    pub reason_code: u8,
    pub retain: bool,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_message`.
#[repr(C)]
pub struct EvtMessage {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub topic: *mut c_char,
    pub payload: *mut c_void,
    pub properties: *mut Property,
    pub reason_string: *mut c_char,
    pub payloadlen: u32,
    pub qos: u8,
    pub reason_code: u8,
    pub retain: bool,
    pub future2: [*mut c_void; 4],
}

/// `struct mosquitto_evt_disconnect`.
#[repr(C)]
pub struct EvtDisconnect {
    pub future: *mut c_void,
    pub client: *mut Mosquitto,
    pub reason: c_int,
    pub future2: [*mut c_void; 4],
}

pub const PLUGIN_VERSION: c_int = 5;
pub const EVT_CONTROL: c_int = 6;
pub const EVT_MESSAGE: c_int = 7;
pub const EVT_DISCONNECT: c_int = 10;

pub const ERR_SUCCESS: c_int = 0;
pub const ERR_INVAL: c_int = 3;
pub const ERR_NOT_FOUND: c_int = 6;
pub const ERR_UNKNOWN: c_int = 13;
pub const ERR_ADMINISTRATIVE_ACTION: c_int = 30;

pub const LOG_NOTICE: c_int = 1 << 1;
pub const LOG_WARNING: c_int = 1 << 2;
pub const LOG_ERR: c_int = 1 << 3;

/// `MQTT_PROP_SERVER_REFERENCE` (mqtt_protocol.h).
pub const PROP_SERVER_REFERENCE: c_int = 28;
/// `mosq_cs_disconnecting` (lib/mosquitto_internal.h of 2.0.11): a client in this state sends
/// no will when it is disconnected, as `mosquitto_kick_client_by_clientid(id, false)` does.
pub const CS_DISCONNECTING: c_int = 2;

pub type GenericCallback = unsafe extern "C" fn(c_int, *mut c_void, *mut c_void) -> c_int;

// The broker functions' signatures (mosquitto_broker.h; lib/send_mosq.h, src/loop.c,
// lib/util_mosq.h and include/mosquitto.h of 2.0.11 for the internals).
pub type CallbackRegisterFn = unsafe extern "C" fn(
    *mut PluginId,
    c_int,
    Option<GenericCallback>,
    *const c_void,
    *mut c_void,
) -> c_int;
pub type CallbackUnregisterFn =
    unsafe extern "C" fn(*mut PluginId, c_int, Option<GenericCallback>, *const c_void) -> c_int;
pub type LogPrintfFn = unsafe extern "C" fn(c_int, *const c_char, ...);
pub type ClientIdFn = unsafe extern "C" fn(*const Mosquitto) -> *const c_char;
pub type ClientProtocolVersionFn = unsafe extern "C" fn(*const Mosquitto) -> c_int;
pub type KickClientByClientidFn = unsafe extern "C" fn(*const c_char, bool) -> c_int;
pub type BrokerPublishCopyFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    c_int,
    *const c_void,
    c_int,
    bool,
    *mut Property,
) -> c_int;
pub type SendDisconnectFn = unsafe extern "C" fn(*mut Mosquitto, u8, *const Property) -> c_int;
pub type DoDisconnectFn = unsafe extern "C" fn(*mut Mosquitto, c_int);
pub type SetStateFn = unsafe extern "C" fn(*mut Mosquitto, c_int) -> c_int;
pub type PropertyAddStringFn =
    unsafe extern "C" fn(*mut *mut Property, c_int, *const c_char) -> c_int;
pub type PropertyFreeAllFn = unsafe extern "C" fn(*mut *mut Property);

/// The public plugin API (mosquitto_broker.h), present in every 2.0 broker.
#[derive(Clone, Copy)]
pub struct Public {
    pub callback_register: CallbackRegisterFn,
    pub callback_unregister: CallbackUnregisterFn,
    pub log_printf: LogPrintfFn,
    pub client_id: ClientIdFn,
    pub client_protocol_version: ClientProtocolVersionFn,
    pub kick_client_by_clientid: KickClientByClientidFn,
    pub broker_publish_copy: BrokerPublishCopyFn,
}

/// Broker internals that send DISCONNECT with properties and the property-list builders of
/// libmosquitto compiled into the broker. Debian's build exports them; upstream's symbol list
/// does not.
#[derive(Clone, Copy)]
pub struct Internal {
    pub send_disconnect: SendDisconnectFn,
    pub do_disconnect: DoDisconnectFn,
    pub set_state: SetStateFn,
    pub property_add_string: PropertyAddStringFn,
    pub property_free_all: PropertyFreeAllFn,
}

/// The address of `name` in the process (the broker executable exports its API), or null.
fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a valid C string has no preconditions.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// The file (shared object or executable) that defines the symbol at `addr`.
fn defining_object(addr: *mut c_void) -> Option<String> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr writes into `info` only; a zeroed Dl_info is a valid initial value.
    let found = unsafe { libc::dladdr(addr, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: dladdr succeeded, so `info` is initialised; dli_fname is a valid C string or null.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: non-null dli_fname points to a NUL-terminated string owned by the loader.
    Some(
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned(),
    )
}

macro_rules! resolve {
    ($name:literal, $ty:ty) => {{
        let p = lookup($name);
        if p.is_null() {
            None
        } else {
            // SAFETY: the symbol of this name has this signature in Mosquitto 2.0.11 (see the
            // type alias); a function pointer has the size of a data pointer here.
            Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(p) })
        }
    }};
}

impl Public {
    /// `Err(name)` of the first missing function: the host is not a Mosquitto 2.0 broker.
    pub fn resolve() -> Result<Public, &'static str> {
        Ok(Public {
            callback_register: resolve!(c"mosquitto_callback_register", CallbackRegisterFn)
                .ok_or("mosquitto_callback_register")?,
            callback_unregister: resolve!(c"mosquitto_callback_unregister", CallbackUnregisterFn)
                .ok_or("mosquitto_callback_unregister")?,
            log_printf: resolve!(c"mosquitto_log_printf", LogPrintfFn)
                .ok_or("mosquitto_log_printf")?,
            client_id: resolve!(c"mosquitto_client_id", ClientIdFn).ok_or("mosquitto_client_id")?,
            client_protocol_version: resolve!(
                c"mosquitto_client_protocol_version",
                ClientProtocolVersionFn
            )
            .ok_or("mosquitto_client_protocol_version")?,
            kick_client_by_clientid: resolve!(
                c"mosquitto_kick_client_by_clientid",
                KickClientByClientidFn
            )
            .ok_or("mosquitto_kick_client_by_clientid")?,
            broker_publish_copy: resolve!(c"mosquitto_broker_publish_copy", BrokerPublishCopyFn)
                .ok_or("mosquitto_broker_publish_copy")?,
        })
    }
}

impl Internal {
    /// The internal functions, when all of them are exported by the same object that defines
    /// the public `mosquitto_kick_client_by_clientid` (the broker itself, not some library that
    /// happens to carry a function of the same name). `Err` says what is missing.
    pub fn resolve() -> Result<Internal, String> {
        let broker = defining_object(lookup(c"mosquitto_kick_client_by_clientid"))
            .ok_or("the broker's own API is not visible through dlsym")?;
        let names: [&CStr; 5] = [
            c"send__disconnect",
            c"do_disconnect",
            c"mosquitto__set_state",
            c"mosquitto_property_add_string",
            c"mosquitto_property_free_all",
        ];
        for name in names {
            let p = lookup(name);
            if p.is_null() {
                return Err(format!("{} is not exported", name.to_string_lossy()));
            }
            let from = defining_object(p).unwrap_or_default();
            if from != broker {
                return Err(format!(
                    "{} comes from {from}, not from the broker {broker}",
                    name.to_string_lossy()
                ));
            }
        }
        Ok(Internal {
            send_disconnect: resolve!(c"send__disconnect", SendDisconnectFn)
                .ok_or("send__disconnect")?,
            do_disconnect: resolve!(c"do_disconnect", DoDisconnectFn).ok_or("do_disconnect")?,
            set_state: resolve!(c"mosquitto__set_state", SetStateFn)
                .ok_or("mosquitto__set_state")?,
            property_add_string: resolve!(c"mosquitto_property_add_string", PropertyAddStringFn)
                .ok_or("mosquitto_property_add_string")?,
            property_free_all: resolve!(c"mosquitto_property_free_all", PropertyFreeAllFn)
                .ok_or("mosquitto_property_free_all")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// Compiles a C program against the installed headers that prints each struct's size and
    /// field offsets, and compares them with the Rust declarations. Needs `cc` and Debian's
    /// `mosquitto-dev` (installed by `.ci/run`): without them it fails, it does not skip.
    #[test]
    fn layout_matches_the_installed_headers() {
        let dir = std::env::temp_dir().join(format!("mqd-plugin-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("layout.c");
        let exe = dir.join("layout");
        std::fs::write(
            &src,
            r#"
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
typedef struct mqtt5__property mosquitto_property;
struct mosquitto;
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#define F(s, f) printf(#s "." #f " %zu\n", offsetof(struct s, f))
int main(void) {
  printf("mosquitto_opt %zu\n", sizeof(struct mosquitto_opt));
  printf("mosquitto_evt_control %zu\n", sizeof(struct mosquitto_evt_control));
  printf("mosquitto_evt_message %zu\n", sizeof(struct mosquitto_evt_message));
  printf("mosquitto_evt_disconnect %zu\n", sizeof(struct mosquitto_evt_disconnect));
  F(mosquitto_opt, value);
  F(mosquitto_evt_control, client); F(mosquitto_evt_control, topic);
  F(mosquitto_evt_control, payload); F(mosquitto_evt_control, payloadlen);
  F(mosquitto_evt_message, client); F(mosquitto_evt_message, payloadlen);
  F(mosquitto_evt_disconnect, client); F(mosquitto_evt_disconnect, reason);
  printf("MOSQ_EVT_CONTROL %d\nMOSQ_EVT_MESSAGE %d\nMOSQ_EVT_DISCONNECT %d\nMOSQ_PLUGIN_VERSION %d\n",
         MOSQ_EVT_CONTROL, MOSQ_EVT_MESSAGE, MOSQ_EVT_DISCONNECT, MOSQ_PLUGIN_VERSION);
  return EXIT_SUCCESS;
}
"#,
        )
        .expect("write layout.c");
        let cc = Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("run cc (install a C compiler)");
        assert!(
            cc.status.success(),
            "cc failed (is mosquitto-dev installed? apt-get install -y mosquitto-dev):\n{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = Command::new(&exe).output().expect("run layout program");
        let _ = std::fs::remove_dir_all(&dir);
        let c = String::from_utf8(out.stdout).expect("utf-8");
        let rust = format!(
            "mosquitto_opt {}\nmosquitto_evt_control {}\nmosquitto_evt_message {}\n\
             mosquitto_evt_disconnect {}\nmosquitto_opt.value {}\n\
             mosquitto_evt_control.client {}\nmosquitto_evt_control.topic {}\n\
             mosquitto_evt_control.payload {}\nmosquitto_evt_control.payloadlen {}\n\
             mosquitto_evt_message.client {}\nmosquitto_evt_message.payloadlen {}\n\
             mosquitto_evt_disconnect.client {}\nmosquitto_evt_disconnect.reason {}\n\
             MOSQ_EVT_CONTROL {EVT_CONTROL}\nMOSQ_EVT_MESSAGE {EVT_MESSAGE}\n\
             MOSQ_EVT_DISCONNECT {EVT_DISCONNECT}\nMOSQ_PLUGIN_VERSION {PLUGIN_VERSION}\n",
            size_of::<Opt>(),
            size_of::<EvtControl>(),
            size_of::<EvtMessage>(),
            size_of::<EvtDisconnect>(),
            offset_of!(Opt, value),
            offset_of!(EvtControl, client),
            offset_of!(EvtControl, topic),
            offset_of!(EvtControl, payload),
            offset_of!(EvtControl, payloadlen),
            offset_of!(EvtMessage, client),
            offset_of!(EvtMessage, payloadlen),
            offset_of!(EvtDisconnect, client),
            offset_of!(EvtDisconnect, reason),
        );
        assert_eq!(c, rust);
    }

    #[test]
    fn outside_a_broker_the_api_is_missing() {
        // The unit-test binary is not a broker: resolution must say so, not crash.
        assert!(Public::resolve().is_err());
        assert!(Internal::resolve().is_err());
    }
}
