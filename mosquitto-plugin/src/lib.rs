//! mqdispatch's Mosquitto 2.0 broker plugin (plugin API version 5).
//!
//! It takes orders on `$CONTROL/mqdispatch/v1` ([`control`]) and answers on
//! `$CONTROL/mqdispatch/v1/response`:
//! - `hello`: which mechanism a move uses (`disconnect-0x9c` or `kick-0x98`);
//! - `move`: sends a connected client DISCONNECT 0x9C/0x9D with a Server Reference through the
//!   broker's internal `send__disconnect` + `do_disconnect` (what `mosquitto_kick_client_by_clientid`
//!   does, with another reason and a property), or the public kick (0x98) where the broker does not
//!   export them ([`ffi::Internal`]);
//! - `rates`: cumulative PUBLISH count and payload bytes per connected client (MOSQ_EVT_MESSAGE).
//!
//! Every entry point catches panics: nothing unwinds into the broker.

pub mod control;
pub mod ffi;

use std::ffi::{CStr, CString, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard};

use control::{Clients, Mechanism, MoveOutcome, Request};
use ffi::{EvtControl, EvtDisconnect, EvtMessage, Internal, Mosquitto, Opt, PluginId, Public};

const TOPIC_C: &CStr = c"$CONTROL/mqdispatch/v1";
const RESPONSE_TOPIC_C: &CStr = c"$CONTROL/mqdispatch/v1/response";

struct Plugin {
    /// `mosquitto_plugin_id_t*` as an integer (the broker's handle, needed to unregister).
    identifier: usize,
    public: Public,
    internal: Option<Internal>,
    mechanism: Mechanism,
    clients: Clients,
}

/// The broker is single-threaded; the lock is never held while calling into the broker, whose
/// calls may raise events (a move raises MOSQ_EVT_DISCONNECT) that take it again.
static PLUGIN: Mutex<Option<Plugin>> = Mutex::new(None);

fn plugin() -> MutexGuard<'static, Option<Plugin>> {
    PLUGIN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f`, turning a panic into `on_panic`.
fn guarded<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

fn log(public: &Public, level: c_int, text: &str) {
    let text = CString::new(text.replace('\0', " ")).expect("invariant: NULs replaced");
    // SAFETY: a "%s" format with one valid C string argument.
    unsafe { (public.log_printf)(level, c"%s".as_ptr(), text.as_ptr()) };
}

fn publish_answer(public: &Public, answer: &serde_json::Value) {
    let text = answer.to_string();
    let Ok(len) = c_int::try_from(text.len()) else {
        return;
    };
    // SAFETY: valid topic C string, payload pointer/length of a live String; the broker copies it.
    let rc = unsafe {
        (public.broker_publish_copy)(
            std::ptr::null(),
            RESPONSE_TOPIC_C.as_ptr(),
            len,
            text.as_ptr().cast(),
            0,
            false,
            std::ptr::null_mut(),
        )
    };
    if rc != ffi::ERR_SUCCESS {
        log(
            public,
            ffi::LOG_WARNING,
            &format!("mqdispatch: cannot publish answer (rc {rc})"),
        );
    }
}

/// The id of a live context, or "" when it has none.
fn client_id_of(public: &Public, client: *const Mosquitto) -> String {
    // SAFETY: `client` is a live context handed to us by the broker in this event.
    let id = unsafe { (public.client_id)(client) };
    if id.is_null() {
        return String::new();
    }
    // SAFETY: non-null ids are NUL-terminated strings owned by the context.
    unsafe { CStr::from_ptr(id) }.to_string_lossy().into_owned()
}

/// Called by the broker right after loading the plugin; answers 5 when the broker supports it.
///
/// # Safety
/// `supported_versions` points to `supported_version_count` ints (or is null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_version(
    supported_version_count: c_int,
    supported_versions: *const c_int,
) -> c_int {
    guarded(-1, || {
        let count = usize::try_from(supported_version_count).unwrap_or(0);
        if supported_versions.is_null() || count == 0 {
            return ffi::PLUGIN_VERSION;
        }
        // SAFETY: the broker passes an array of `supported_version_count` ints.
        let versions = unsafe { std::slice::from_raw_parts(supported_versions, count) };
        if versions.contains(&ffi::PLUGIN_VERSION) {
            ffi::PLUGIN_VERSION
        } else {
            -1
        }
    })
}

/// The events the plugin registers for: (event, callback, event data).
fn registrations() -> [(c_int, ffi::GenericCallback, *const c_void); 3] {
    [
        (ffi::EVT_CONTROL, on_control, TOPIC_C.as_ptr().cast()),
        (ffi::EVT_MESSAGE, on_message, std::ptr::null()),
        (ffi::EVT_DISCONNECT, on_disconnect, std::ptr::null()),
    ]
}

/// `plugin_opt_mechanism kick` forces the public kick (for tests and cautious operators);
/// `auto` (the default) uses DISCONNECT with a Server Reference when the broker allows it.
fn forced_kick(options: *const Opt, count: c_int) -> Result<bool, String> {
    let count = usize::try_from(count).unwrap_or(0);
    if options.is_null() || count == 0 {
        return Ok(false);
    }
    // SAFETY: the broker passes an array of `option_count` options with C-string keys/values.
    let options = unsafe { std::slice::from_raw_parts(options, count) };
    let mut kick = false;
    for opt in options {
        if opt.key.is_null() || opt.value.is_null() {
            continue;
        }
        // SAFETY: non-null NUL-terminated strings owned by the broker's config.
        let (key, value) = unsafe { (CStr::from_ptr(opt.key), CStr::from_ptr(opt.value)) };
        match (key.to_bytes(), value.to_bytes()) {
            (b"mechanism", b"kick") => kick = true,
            (b"mechanism", b"auto") => kick = false,
            (b"mechanism", other) => {
                return Err(format!(
                    "plugin_opt_mechanism {} is not `auto` or `kick`",
                    String::from_utf8_lossy(other)
                ));
            }
            _ => {}
        }
    }
    Ok(kick)
}

/// Called once by the broker: registers the callbacks and decides the move mechanism.
///
/// # Safety
/// Called by Mosquitto 2.0 with its plugin identifier, a valid userdata slot and `option_count`
/// options.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_init(
    identifier: *mut PluginId,
    userdata: *mut *mut c_void,
    options: *mut Opt,
    option_count: c_int,
) -> c_int {
    guarded(ffi::ERR_UNKNOWN, || {
        // Without the public API there is no way to even log: refuse to load.
        let Ok(public) = Public::resolve() else {
            return ffi::ERR_UNKNOWN;
        };
        if !userdata.is_null() {
            // SAFETY: the broker passes a valid pointer to its userdata slot.
            unsafe { *userdata = std::ptr::null_mut() };
        }
        let force_kick = match forced_kick(options, option_count) {
            Ok(k) => k,
            Err(e) => {
                log(&public, ffi::LOG_ERR, &format!("mqdispatch plugin: {e}"));
                return ffi::ERR_INVAL;
            }
        };
        let (internal, why) = match Internal::resolve() {
            Ok(_) if force_kick => (None, "plugin_opt_mechanism kick".to_owned()),
            Ok(i) => (
                Some(i),
                "send__disconnect/do_disconnect are exported".to_owned(),
            ),
            Err(e) => (None, e),
        };
        let mechanism = if internal.is_some() {
            Mechanism::Disconnect
        } else {
            Mechanism::Kick
        };
        for (event, cb, data) in registrations() {
            // SAFETY: a valid identifier from the broker, a callback with the generic signature
            // and, for the control event, a static topic string.
            let rc = unsafe {
                (public.callback_register)(identifier, event, Some(cb), data, std::ptr::null_mut())
            };
            if rc != ffi::ERR_SUCCESS {
                log(
                    &public,
                    ffi::LOG_ERR,
                    &format!("mqdispatch plugin: cannot register event {event} (rc {rc})"),
                );
                return rc;
            }
        }
        log(
            &public,
            ffi::LOG_NOTICE,
            &format!(
                "mqdispatch plugin {}: control topic {}, moves use {} ({why})",
                env!("CARGO_PKG_VERSION"),
                control::TOPIC,
                mechanism.as_str()
            ),
        );
        *plugin() = Some(Plugin {
            identifier: identifier as usize,
            public,
            internal,
            mechanism,
            clients: Clients::default(),
        });
        ffi::ERR_SUCCESS
    })
}

/// Called once by the broker at shutdown: unregisters the callbacks.
///
/// # Safety
/// Called by Mosquitto 2.0 after [`mosquitto_plugin_init`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_cleanup(
    _userdata: *mut c_void,
    _options: *mut Opt,
    _option_count: c_int,
) -> c_int {
    guarded(ffi::ERR_UNKNOWN, || {
        let Some(p) = plugin().take() else {
            return ffi::ERR_SUCCESS;
        };
        let identifier = p.identifier as *mut PluginId;
        for (event, cb, data) in registrations() {
            // SAFETY: the same identifier, callbacks and event data as registered.
            unsafe { (p.public.callback_unregister)(identifier, event, Some(cb), data) };
        }
        ffi::ERR_SUCCESS
    })
}

unsafe extern "C" fn on_message(_event: c_int, data: *mut c_void, _user: *mut c_void) -> c_int {
    guarded(ffi::ERR_SUCCESS, || {
        if data.is_null() {
            return ffi::ERR_SUCCESS;
        }
        // SAFETY: for MOSQ_EVT_MESSAGE the broker passes a `struct mosquitto_evt_message`.
        let ev = unsafe { &*data.cast::<EvtMessage>() };
        if ev.client.is_null() {
            return ffi::ERR_SUCCESS;
        }
        let mut guard = plugin();
        if let Some(p) = guard.as_mut() {
            let public = p.public;
            let client = ev.client;
            p.clients
                .on_message(client as usize, u64::from(ev.payloadlen), || {
                    client_id_of(&public, client)
                });
        }
        ffi::ERR_SUCCESS
    })
}

unsafe extern "C" fn on_disconnect(_event: c_int, data: *mut c_void, _user: *mut c_void) -> c_int {
    guarded(ffi::ERR_SUCCESS, || {
        if data.is_null() {
            return ffi::ERR_SUCCESS;
        }
        // SAFETY: for MOSQ_EVT_DISCONNECT the broker passes a `struct mosquitto_evt_disconnect`.
        let ev = unsafe { &*data.cast::<EvtDisconnect>() };
        if let Some(p) = plugin().as_mut() {
            p.clients.forget(ev.client as usize);
        }
        ffi::ERR_SUCCESS
    })
}

unsafe extern "C" fn on_control(_event: c_int, data: *mut c_void, _user: *mut c_void) -> c_int {
    guarded(ffi::ERR_SUCCESS, || {
        if data.is_null() {
            return ffi::ERR_SUCCESS;
        }
        // SAFETY: for MOSQ_EVT_CONTROL the broker passes a `struct mosquitto_evt_control`.
        let ev = unsafe { &*data.cast::<EvtControl>() };
        let payload: &[u8] = if ev.payload.is_null() || ev.payloadlen == 0 {
            &[]
        } else {
            // SAFETY: the payload pointer and length describe the message being handled.
            unsafe { std::slice::from_raw_parts(ev.payload.cast(), ev.payloadlen as usize) }
        };
        let Some((public, answer)) = answer_control(payload, ev.client) else {
            return ffi::ERR_SUCCESS;
        };
        publish_answer(&public, &answer);
        ffi::ERR_SUCCESS
    })
}

/// Handles one order; `None` when the plugin is not initialised.
fn answer_control(payload: &[u8], sender: *mut Mosquitto) -> Option<(Public, serde_json::Value)> {
    let guard = plugin();
    let p = guard.as_ref()?;
    let public = p.public;
    let answer = match control::parse(payload) {
        Err(e) => control::error_answer(&e),
        Ok(Request::Hello) => control::hello_answer(p.mechanism),
        Ok(Request::Rates { id }) => {
            let t_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            p.clients.rates_answer(&id, t_ms)
        }
        Ok(Request::Move {
            id,
            client_id,
            server_reference,
            reason_code,
        }) => {
            let context = p.clients.context_of(&client_id);
            let internal = p.internal;
            // The broker raises MOSQ_EVT_DISCONNECT during the move, which takes the lock.
            drop(guard);
            let outcome = if !sender.is_null() && client_id_of(&public, sender) == client_id {
                MoveOutcome::Error("a client cannot move itself with a control message".into())
            } else {
                move_client(
                    &public,
                    internal,
                    context,
                    &client_id,
                    &server_reference,
                    reason_code,
                )
            };
            return Some((public, control::move_answer(&id, &client_id, &outcome)));
        }
    };
    Some((public, answer))
}

/// Disconnects one client: DISCONNECT `reason` + Server Reference when the internals are there,
/// the client speaks MQTT v5 and it has published since it connected (so its live context is
/// known); else the public kick (0x98 to a v5 client).
fn move_client(
    public: &Public,
    internal: Option<Internal>,
    context: Option<usize>,
    client_id: &str,
    server_reference: &str,
    reason: u8,
) -> MoveOutcome {
    let (Ok(id_c), Ok(reference_c)) = (CString::new(client_id), CString::new(server_reference))
    else {
        return MoveOutcome::Error("client_id or server_reference contains NUL".into());
    };
    if let (Some(int), Some(ctx)) = (internal, context) {
        let ctx = ctx as *mut Mosquitto;
        // SAFETY: `ctx` is live: it is forgotten on MOSQ_EVT_DISCONNECT, which the broker raises
        // before a context can be freed.
        if unsafe { (public.client_protocol_version)(ctx) } == 5 {
            return disconnect_with_reference(&int, ctx, &reference_c, reason);
        }
    }
    // SAFETY: a valid C string.
    match unsafe { (public.kick_client_by_clientid)(id_c.as_ptr(), false) } {
        ffi::ERR_SUCCESS => MoveOutcome::Kicked,
        ffi::ERR_NOT_FOUND => MoveOutcome::NotConnected,
        rc => MoveOutcome::Error(format!("mosquitto_kick_client_by_clientid returned {rc}")),
    }
}

/// What `mosquitto_kick_client_by_clientid(id, false)` does in 2.0.11 (src/plugin_public.c,
/// `disconnect_client`), with the requested reason and a Server Reference property.
fn disconnect_with_reference(
    int: &Internal,
    ctx: *mut Mosquitto,
    reference: &CStr,
    reason: u8,
) -> MoveOutcome {
    let mut props: *mut ffi::Property = std::ptr::null_mut();
    // SAFETY: builds a one-element property list owned by us, freed below.
    let rc = unsafe {
        (int.property_add_string)(&mut props, ffi::PROP_SERVER_REFERENCE, reference.as_ptr())
    };
    let sent = if rc == ffi::ERR_SUCCESS {
        // SAFETY: a live v5 context and a valid DISCONNECT property list; the packet is
        // serialised before the call returns.
        unsafe { (int.send_disconnect)(ctx, reason, props) }
    } else {
        rc
    };
    // SAFETY: frees the list built above (null-safe).
    unsafe { (int.property_free_all)(&mut props) };
    // SAFETY: as in the public kick: no will, then close and clean up the context.
    unsafe {
        (int.set_state)(ctx, ffi::CS_DISCONNECTING);
        (int.do_disconnect)(ctx, ffi::ERR_ADMINISTRATIVE_ACTION);
    }
    if sent == ffi::ERR_SUCCESS {
        MoveOutcome::Disconnected
    } else {
        MoveOutcome::Error(format!(
            "DISCONNECT with Server Reference not sent (rc {sent}); the client was disconnected without it"
        ))
    }
}
