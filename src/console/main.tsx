/** Console entry point: mounts the app and routes internal link clicks through the history router. */
import { render } from 'preact';
import { App } from './app';
import { interceptLinks } from './router';
import './styles.css';

const root = document.getElementById('app')!;
root.textContent = '';
interceptLinks(root);
render(<App />, root);
