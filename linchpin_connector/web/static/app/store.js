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

export const loadCookies = async () => (await run(COOKIES, "readonly", (store) => store.get(JAR))) || [];
export const saveCookies = (jar) => run(COOKIES, "readwrite", (store) => store.put(jar, JAR));
/** A new pairing (perhaps another user) starts with an empty jar. */
export const forgetCookies = () => run(COOKIES, "readwrite", (store) => store.delete(JAR));
