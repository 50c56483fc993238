// This origin's IndexedDB: the device's state (it holds the device's secrets:
// they never leave this browser's storage for the origin) and the tunnel's
// cookie jar (cookies.js).

const DB = "linchpin-device", VERSION = 2, STATE = "state", COOKIES = "cookies";
const DEVICE = "device", JAR = "jar";

function database() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, VERSION);
    request.onupgradeneeded = () => {
      for (const name of [STATE, COOKIES]) {
        if (!request.result.objectStoreNames.contains(name)) request.result.createObjectStore(name);
      }
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(name, mode, work) {
  const db = await database();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(name, mode);
      const request = work(tx.objectStore(name));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export const loadState = () => run(STATE, "readonly", (store) => store.get(DEVICE));
export const saveState = (state) => run(STATE, "readwrite", (store) => store.put(state, DEVICE));
export const forgetState = () => run(STATE, "readwrite", (store) => store.delete(DEVICE));

// The jar is kept with the id of the device it belongs to: a response of an
// earlier pairing that arrives late is never written into a new pairing's jar.

/** The jar of device ``deviceId`` (empty if the jar kept is another device's). */
export async function loadCookies(deviceId) {
  const kept = await run(COOKIES, "readonly", (store) => store.get(JAR));
  return kept?.deviceId === deviceId ? kept.jar : [];
}

/**
 * ``change(jar)`` -> the new jar of device ``deviceId``, in one transaction
 * with the check that ``deviceId`` is still the device this browser holds.
 * Resolves to true if the jar was changed.
 */
export async function changeCookies(deviceId, change) {
  const db = await database();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction([STATE, COOKIES], "readwrite");
      let changed = false;
      const state = tx.objectStore(STATE).get(DEVICE);
      const kept = tx.objectStore(COOKIES).get(JAR);
      kept.onsuccess = () => { // requests complete in order: the state is read by now
        if (state.result?.deviceId !== deviceId) return;
        const jar = kept.result?.deviceId === deviceId ? kept.result.jar : [];
        tx.objectStore(COOKIES).put({ deviceId, jar: change(jar) }, JAR);
        changed = true;
      };
      tx.oncomplete = () => resolve(changed);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

/** A new pairing (perhaps another user) starts with an empty jar. */
export const forgetCookies = () => run(COOKIES, "readwrite", (store) => store.delete(JAR));
