// The demo's one script: each page says which it is in `<body data-page>`.
import { streamerPage } from './streamer.js';
import { viewerPage } from './viewer.js';

const pages: Record<string, () => void> = { streamer: streamerPage, viewer: viewerPage };
pages[document.body.dataset.page ?? '']?.();
