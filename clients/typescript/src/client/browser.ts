// Browsers: the network coming back (`online`) or the page becoming
// visible again are reasons to retry at once. Elsewhere, nothing.

/** Calls `onOnline` on those events; returns the function that stops listening. */
export function listenToBrowser(onOnline: () => void): () => void {
  const target = globalThis as {
    addEventListener?: (type: string, listener: () => void) => void;
    removeEventListener?: (type: string, listener: () => void) => void;
    document?: { visibilityState?: string; addEventListener?: (type: string, listener: () => void) => void; removeEventListener?: (type: string, listener: () => void) => void };
  };
  if (typeof target.addEventListener !== "function" || target.document === undefined) {
    return () => undefined;
  }
  const onVisible = () => {
    if (target.document?.visibilityState === "visible") {
      onOnline();
    }
  };
  target.addEventListener("online", onOnline);
  target.document.addEventListener?.("visibilitychange", onVisible);
  return () => {
    target.removeEventListener?.("online", onOnline);
    target.document?.removeEventListener?.("visibilitychange", onVisible);
  };
}
