// notelab in JupyterLab: the Workers and Experiments side panels, launcher tiles for them and for
// MLflow (served inside the lab by jupyter-server-proxy), and "Run as experiment" on notebooks.
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IFrame, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { LabIcon } from '@jupyterlab/ui-components';

import { labUrl } from './api';
import { comparePanel, comparePanelId } from './compare';
import { ExperimentsPanel } from './experiments';
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
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'notelab:plugin',
  description: 'Workers and Experiments panels, launcher tiles, Run as experiment, MLflow in the lab.',
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
    shell.add(workers, 'left', { rank: 600 });
    shell.add(experiments, 'left', { rank: 601 });
    restorer?.add(workers, workers.id);
    restorer?.add(experiments, experiments.id);

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

    for (const [command, rank] of [[CommandIDs.workers, 1], [CommandIDs.experiments, 2], [CommandIDs.mlflow, 3]] as const) {
      launcher?.add({ command, category: 'notelab', rank });
      palette?.addItem({ command, category: 'notelab' });
    }
  }
};

export default plugin;
