import { useWorkerTmp } from './worker-tmp.ts';

// Runs in each worker before each test file (vitest.config.ts setupFiles).
useWorkerTmp();
