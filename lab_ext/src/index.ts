// notelab in JupyterLab: the Workers, Experiments, Knowledge and Chat side panels, launcher tiles for them and
// for MLflow (served inside the lab by jupyter-server-proxy), "Run as experiment" on notebooks and "Add to
// knowledge base" on files.
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IFrame, InputDialog, MainAreaWidget, Notification, WidgetTracker } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { LabIcon } from '@jupyterlab/ui-components';

import { labUrl } from './api';
import { comparePanel, comparePanelId } from './compare';
import { ExperimentsPanel } from './experiments';
import { ChatPanel } from './chat';
import { KnowledgePanel, sourcePanel } from './knowledge';
import { logPanel } from './workers';
import { WorkersPanel } from './workers';

const svg = (path: string) =>
  `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" d="${path}"/></svg>`;

export const workersIcon = new LabIcon({
  name: 'notelab:workers',
  svgstr: svg('M4 4h16v6H4zm0 10h16v6H4zm2-8v2h2V6zm0 10v2h2v-2z')
});
export const experimentsIcon = new LabIcon({
  name: 'notelab:experiments',
  svgstr: svg('M9 2h6v2h-1v5.2l5.6 9.7A2 2 0 0 1 17.9 22H6.1a2 2 0 0 1-1.7-3.1L10 9.2V4H9zm3 9.3L8.4 17h7.2z')
});
export const knowledgeIcon = new LabIcon({
  name: 'notelab:knowledge',
  svgstr: svg('M6 2h11a2 2 0 0 1 2 2v16a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm1 3v2h9V5zm0 4v2h9V9zm0 4v2h6v-2z')
});
export const chatIcon = new LabIcon({
  name: 'notelab:chat',
  svgstr: svg('M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 5v2h10V8zm0 4v2h7v-2z')
});
export const mlflowIcon = new LabIcon({
  name: 'notelab:mlflow',
  svgstr: svg('M3 20h18v2H3zM5 10h3v8H5zm5-6h3v14h-3zm5 9h3v5h-3z')
});

namespace CommandIDs {
  export const workers = 'notelab:open-workers';
  export const experiments = 'notelab:open-experiments';
  export const mlflow = 'notelab:open-mlflow';
  export const runAs = 'notelab:run-as-experiment';
  export const logs = 'notelab:worker-logs';
  export const knowledge = 'notelab:open-knowledge';
  export const addToKb = 'notelab:add-to-knowledge-base';
  export const chat = 'notelab:open-chat';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'notelab:plugin',
  description: 'Workers, Experiments and Knowledge panels, launcher tiles, Run as experiment, Add to knowledge base, MLflow in the lab.',
  autoStart: true,
  requires: [IDocumentManager],
  optional: [ILauncher, ICommandPalette, ILayoutRestorer, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    docs: IDocumentManager,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    browser: IDefaultFileBrowser | null
  ) => {
    const { commands, shell } = app;
    const logs = new WidgetTracker<MainAreaWidget>({ namespace: 'notelab-logs' });
    const mlflowPanels = new WidgetTracker<MainAreaWidget<IFrame>>({ namespace: 'notelab-mlflow' });

    const workers = new WorkersPanel(w => void commands.execute(CommandIDs.logs, { name: w.name, cluster: w.target === 'cluster' }));
    workers.title.icon = workersIcon;
    const experiments = new ExperimentsPanel({
      openNotebook: path => void docs.openOrReveal(path),
      openMlflow: hash => void commands.execute(CommandIDs.mlflow, { hash }),
      openCompare: (a, b, metric) => {
        const id = comparePanelId(a, b, metric);
        if (![...shell.widgets('main')].some(w => w.id === id)) {  // finished runs do not change: reuse it
          shell.add(comparePanel(a, b, metric), 'main');
        }
        shell.activateById(id);
      }
    });
    experiments.title.icon = experimentsIcon;
    const knowledgeHost = {
      openPath: (path: string, loc: Record<string, number>) => void openAt(path, loc),
      openSource: (kb: string, source: string, loc: Record<string, number>) => void sourcePanel(kb, source, loc).then(panel => {
        [...shell.widgets('main')].find(w => w.id === panel.id)?.dispose();  // a fresh one, at the new place
        shell.add(panel, 'main');
        shell.activateById(panel.id);
      })
    };
    const knowledge = new KnowledgePanel(knowledgeHost);
    knowledge.title.icon = knowledgeIcon;
    const chat = new ChatPanel({
      openPath: (path, loc) => void openAt(path, loc),
      openSource: (kb, source, loc) => knowledgeHost.openSource(kb, source, loc),
      openNotebook: path => void docs.openOrReveal(path)
    });
    chat.title.icon = chatIcon;
    shell.add(workers, 'left', { rank: 600 });
    shell.add(experiments, 'left', { rank: 601 });
    shell.add(knowledge, 'left', { rank: 602 });
    shell.add(chat, 'left', { rank: 603 });
    restorer?.add(workers, workers.id);
    restorer?.add(experiments, experiments.id);
    restorer?.add(knowledge, knowledge.id);
    restorer?.add(chat, chat.id);

    /** Open a file under the root at a hit's place: a line in an editor, a cell in a notebook. */
    async function openAt(path: string, loc: Record<string, number>): Promise<void> {
      const widget = docs.openOrReveal(path);
      if (!widget) {
        return;
      }
      await widget.context.ready;
      const content = (widget as any).content;
      if (loc.cell !== undefined && content?.widgets && 'activeCellIndex' in content) {
        content.activeCellIndex = Math.max(0, loc.cell - 1);
        void content.scrollToItem?.(content.activeCellIndex);
      } else if (loc.line !== undefined && content?.editor) {
        const position = { line: Math.max(0, loc.line - 1), column: 0 };
        content.editor.setCursorPosition(position);
        content.editor.revealPosition?.(position);
      }
    }

    commands.addCommand(CommandIDs.workers, {
      label: 'Workers',
      caption: 'Launch and watch vLLM workers',
      icon: workersIcon,
      execute: () => shell.activateById(workers.id)
    });
    commands.addCommand(CommandIDs.experiments, {
      label: 'Experiments',
      caption: 'Run notebooks as tracked experiments',
      icon: experimentsIcon,
      execute: () => shell.activateById(experiments.id)
    });
    commands.addCommand(CommandIDs.knowledge, {
      label: 'Knowledge',
      caption: 'Knowledge bases: add documents, watch them ingest, search',
      icon: knowledgeIcon,
      execute: () => shell.activateById(knowledge.id)
    });
    commands.addCommand(CommandIDs.chat, {
      label: 'Chat',
      caption: 'Ask a worker, grounded in a knowledge base, with citations',
      icon: chatIcon,
      execute: () => shell.activateById(chat.id)
    });
    commands.addCommand(CommandIDs.addToKb, {
      label: 'Add to knowledge base',
      icon: knowledgeIcon,
      isVisible: () => !!browser && !browser.selectedItems().next().done,
      execute: async () => {
        const paths = browser ? [...browser.selectedItems()].map(item => item.path) : [];
        if (!paths.length) {
          return;
        }
        let names: string[];
        try {
          names = await knowledge.names();
        } catch (e) {
          Notification.error((e as Error).message, { autoClose: 8000 });
          return;
        }
        if (!names.length) {
          Notification.warning('No knowledge base yet: create one in the Knowledge panel first.', { autoClose: 8000 });
          shell.activateById(knowledge.id);
          return;
        }
        const pick = await InputDialog.getItem({ title: `Add ${paths.length} item(s) to`, items: names, current: 0 });
        if (!pick.button.accept || !pick.value) {
          return;
        }
        shell.activateById(knowledge.id);
        await knowledge.add(pick.value, paths);
      }
    });
    app.contextMenu.addItem({ command: CommandIDs.addToKb, selector: '.jp-DirListing-item', rank: 4 });
    commands.addCommand(CommandIDs.mlflow, {
      label: 'MLflow',
      caption: 'The MLflow UI on notelab\'s tracking store, inside the lab',
      icon: mlflowIcon,
      execute: args => {
        const url = labUrl('mlflow') + '/' + ((args.hash as string) ?? '');
        let panel = mlflowPanels.currentWidget;
        if (!panel || panel.isDisposed) {
          const frame = new IFrame({
            sandbox: ['allow-scripts', 'allow-same-origin', 'allow-forms', 'allow-popups', 'allow-downloads']
          });
          panel = new MainAreaWidget({ content: frame });
          panel.id = 'notelab-mlflow';
          panel.title.label = 'MLflow';
          panel.title.icon = mlflowIcon;
          panel.title.closable = true;
          void mlflowPanels.add(panel);
          shell.add(panel, 'main');
        }
        panel.content.url = url;
        shell.activateById(panel.id);
      }
    });
    commands.addCommand(CommandIDs.logs, {
      label: 'Worker logs',
      execute: args => {
        const name = args.name as string;
        const existing = logs.find(w => w.id === `notelab-log-${name}`);
        if (existing) {
          shell.activateById(existing.id);
          return;
        }
        const panel = logPanel(name, !!args.cluster);
        void logs.add(panel);
        shell.add(panel, 'main', { mode: 'split-bottom' });
      }
    });
    commands.addCommand(CommandIDs.runAs, {
      label: 'Run as experiment',
      icon: experimentsIcon,
      isVisible: () => {
        const item = browser?.selectedItems().next();
        return !!item && !item.done && item.value.path.endsWith('.ipynb');
      },
      execute: () => {
        const item = browser?.selectedItems().next();
        if (!item || item.done) {
          return;
        }
        shell.activateById(experiments.id);
        void experiments.load(item.value.path);
      }
    });
    app.contextMenu.addItem({
      command: CommandIDs.runAs,
      selector: '.jp-DirListing-item[data-file-type="notebook"]',
      rank: 3
    });

    for (const [command, rank] of [[CommandIDs.workers, 1], [CommandIDs.experiments, 2], [CommandIDs.knowledge, 3],
      [CommandIDs.chat, 4], [CommandIDs.mlflow, 5]] as const) {
      launcher?.add({ command, category: 'notelab', rank });
      palette?.addItem({ command, category: 'notelab' });
    }
  }
};

export default plugin;
