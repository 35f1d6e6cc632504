// The SDK imports `ws` only outside browsers; the demo never loads it.
declare module 'ws';
