// The device's state in this origin's IndexedDB (it holds the device's secrets:
// they never leave this browser's storage for the origin).

const DB = "linchpin-device", STORE = "state", KEY = "device";

function database() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, work) {
  const db = await database();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = work(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

export const loadState = () => run("readonly", (store) => store.get(KEY));
export const saveState = (state) => run("readwrite", (store) => store.put(state, KEY));
export const forgetState = () => run("readwrite", (store) => store.delete(KEY));
